"""CoCoA-style reconstruction pre-training: the decoder learns to rebuild items from their embedding."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import TINY_VIT
from transformers import TrainingArguments

from dataset_builders import load_scenes
from unica.checkpoint import init_model, load_checkpoint
from unica.cocoa import ItemCollator, ReconstructionHead, ReconstructionTrainer, reconstruction_loss

FIXTURE = Path(__file__).parent / "fixtures" / "scenes"


def test_reconstruction_pretraining_learns_and_saves_a_plain_checkpoint(minilm_path, tmp_path):
    torch.manual_seed(0)
    model, processor = init_model(minilm_path, "vit-micro", fusion="bica", vision_config_overrides=TINY_VIT)
    rows = load_scenes(FIXTURE, split="train").select(range(16))
    collator = ItemCollator(processor)
    head = ReconstructionHead.for_model(model, num_heads=4)
    batch = collator([rows[i] for i in range(8)])
    assert bool(batch["image_mask"].any()) and not bool(batch["image_mask"].all())  # a mixed batch
    with torch.no_grad():
        before = reconstruction_loss(model, head, batch)
    args = TrainingArguments(str(tmp_path / "run"), max_steps=30, per_device_train_batch_size=8, learning_rate=2e-3,
                             remove_unused_columns=False, report_to=[], save_strategy="no", logging_steps=10,
                             use_cpu=True, seed=0, dataloader_pin_memory=False)
    trainer = ReconstructionTrainer(model=model, head=head, args=args, train_dataset=rows, data_collator=collator,
                                    processing_class=processor)
    trainer.train()
    model.eval()
    with torch.no_grad():
        after = reconstruction_loss(model, head, batch)
    assert after.text_loss < 0.5 * before.text_loss, (before.text_loss, after.text_loss)
    assert after.token_accuracy > before.token_accuracy + 0.2
    assert after.image_loss < before.image_loss
    trainer.save_model(str(tmp_path / "pretrained"))
    loaded, _ = load_checkpoint(tmp_path / "pretrained")
    assert not any("decoder" in name for name in loaded.state_dict())
    torch.testing.assert_close(loaded.visual_projection.proj.weight, model.visual_projection.proj.weight)
