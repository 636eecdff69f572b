"""peft: LoRA adapters saved by UniCATrainer load with PeftModel, and merging keeps the embeddings."""

from __future__ import annotations

import torch
from peft import PeftModel
from test_trainer import make_rows, make_trainer

from unica.checkpoint import load_checkpoint


def test_saved_adapter_loads_with_peft_and_merges_to_the_same_embeddings(tiny_text_path, tmp_path):
    trainer = make_trainer(tiny_text_path, tmp_path, lora_r=4, lora_alpha=8, max_steps=2, merge_lora=False)
    trainer.train()
    folder = tmp_path / "lora-model"
    trainer.save_model(str(folder))
    batch = trainer.data_collator(make_rows(3))["query"]
    with torch.no_grad():
        expected = trainer.model.eval()(**batch).embeddings

    base, _ = load_checkpoint(folder)  # merge_lora=False: the folder holds the base weights + lora_adapter/
    with torch.no_grad():
        base_only = base(**batch).embeddings
    assert (base_only - expected).abs().max() > 1e-4  # the adapter changes the embeddings

    base.text_model = PeftModel.from_pretrained(base.text_model, folder / "lora_adapter")
    with torch.no_grad():
        with_adapter = base(**batch).embeddings
    torch.testing.assert_close(with_adapter, expected, atol=1e-5, rtol=1e-4)

    base.text_model = base.text_model.merge_and_unload()
    assert not any("lora_" in name for name, _ in base.named_parameters())
    with torch.no_grad():
        merged = base(**batch).embeddings
    torch.testing.assert_close(merged, with_adapter, atol=1e-5, rtol=1e-4)
