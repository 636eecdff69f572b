"""CoCoA-style reconstruction pre-training: the decoder learns to rebuild items from their embedding; resuming
restores the model (renamed ViT keys included) and the head exactly; data-parallel runs keep the head in sync."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import TINY_VIT
from safetensors.torch import load_file
from test_ddp import torchrun_two_processes
from test_trainer_cli import StopAfter
from transformers import TrainingArguments

from dataset_builders import load_scenes
from unica.checkpoint import init_model, load_checkpoint
from unica.cocoa import HEAD_FILE, ItemCollator, ReconstructionHead, ReconstructionTrainer, reconstruction_loss

FIXTURE = Path(__file__).parent / "fixtures" / "scenes"

# Trains 2 steps in each of 2 processes (gloo, activation checkpointing on) and writes each rank's head and model
# weights.
RUNNER = f"""
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from transformers import TrainingArguments

from dataset_builders import load_scenes
from unica.checkpoint import init_model
from unica.cocoa import ItemCollator, ReconstructionHead, ReconstructionTrainer

text, out = sys.argv[1:]
torch.manual_seed(0)
model, processor = init_model(text, "vit-micro", vision_config_overrides={TINY_VIT!r})
head = ReconstructionHead.for_model(model, num_heads=2)
args = TrainingArguments(out, max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3, use_cpu=True,
                         ddp_backend="gloo", remove_unused_columns=False, report_to=[], save_strategy="no", seed=0,
                         dataloader_pin_memory=False, disable_tqdm=True, activation_checkpointing=True)
rows = load_scenes({str(FIXTURE)!r}, split="train").select(range(16))
trainer = ReconstructionTrainer(model=model, head=head, args=args, train_dataset=rows,
                                data_collator=ItemCollator(processor), processing_class=processor)
trainer.train()
weights = {{f"head.{{k}}": v.detach().clone() for k, v in head.state_dict().items()}}
weights.update({{f"model.{{k}}": v.detach().clone() for k, v in model.state_dict().items()}})
save_file(weights, f"{{out}}/rank{{args.process_index}}.safetensors")
dist.barrier()
trainer.accelerator.free_memory()
dist.destroy_process_group()
"""


def test_reconstruction_pretraining_learns_and_saves_a_plain_checkpoint(tiny_text_path, tmp_path):
    torch.manual_seed(0)
    model, processor = init_model(tiny_text_path, "vit-micro", fusion="bica", vision_config_overrides=TINY_VIT)
    rows = load_scenes(FIXTURE, split="train").select(range(16))
    collator = ItemCollator(processor)
    head = ReconstructionHead.for_model(model, num_heads=2)
    batch = collator([rows[i] for i in range(8)])
    assert bool(batch["image_mask"].any()) and not bool(batch["image_mask"].all())  # a mixed batch
    with torch.no_grad():
        before = reconstruction_loss(model, head, batch)
    args = TrainingArguments(str(tmp_path / "run"), max_steps=30, per_device_train_batch_size=8, learning_rate=1e-2,
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


def _run(text: str, output_dir: Path, seed: int, callbacks=(), resume: str | None = None):
    """A 4-step reconstruction run saving checkpoint-2 and checkpoint-4; (model, head, trainer) after it."""
    torch.manual_seed(seed)
    model, processor = init_model(text, "vit-micro", vision_config_overrides=TINY_VIT)
    head = ReconstructionHead.for_model(model, num_heads=2)
    args = TrainingArguments(str(output_dir), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3,
                             remove_unused_columns=False, report_to=[], save_strategy="steps", save_steps=2,
                             use_cpu=True, seed=0, dataloader_pin_memory=False, disable_tqdm=True)
    rows = load_scenes(FIXTURE, split="train").select(range(16))
    trainer = ReconstructionTrainer(model=model, head=head, args=args, train_dataset=rows, callbacks=list(callbacks),
                                    data_collator=ItemCollator(processor), processing_class=processor)
    trainer.train(resume_from_checkpoint=resume)
    return model, head, trainer


def test_resume_restores_the_vision_tower_and_head_exactly(tiny_text_path, tmp_path) -> None:
    full_model, full_head, full = _run(tiny_text_path, tmp_path / "full", seed=0)
    _run(tiny_text_path, tmp_path / "cut", seed=0, callbacks=[StopAfter(2)])
    checkpoint = tmp_path / "cut" / "checkpoint-2"
    assert (checkpoint / HEAD_FILE).is_file()
    saved, _ = load_checkpoint(checkpoint)  # a UniCA checkpoint folder, loaded strictly
    # ViT's keys are renamed on save: a raw state-dict load of the file would miss the tower.
    assert set(load_file(checkpoint / "model.safetensors")) != set(saved.state_dict())
    # Another seed: every resumed weight must come from the checkpoint.
    model, head, _ = _run(tiny_text_path, tmp_path / "cut", seed=1, resume=str(checkpoint))
    for ours, reference in ((model, full_model), (head, full_head)):
        expected = reference.state_dict()
        for name in sorted(expected, key=lambda name: not name.startswith("vision_model.")):  # the tower first
            torch.testing.assert_close(ours.state_dict()[name], expected[name], atol=1e-6, rtol=1e-5, msg=name)

    full.save_model()  # the final model goes into output_dir beside the checkpoints, which stay
    assert (tmp_path / "full" / "checkpoint-4" / HEAD_FILE).is_file()
    assert not (tmp_path / "full" / HEAD_FILE).exists()
    final, _ = load_checkpoint(tmp_path / "full")
    torch.testing.assert_close(final.visual_projection.proj.weight, full_model.visual_projection.proj.weight)


def test_a_text_only_step_gives_every_trainable_weight_a_gradient(tiny_text_path) -> None:
    """What data-parallel training without unused-parameter search needs (the head's image layer included)."""
    torch.manual_seed(0)
    model, processor = init_model(tiny_text_path, "vit-micro", vision_config_overrides=TINY_VIT)
    trainer = ReconstructionTrainer(
        model=model, head=ReconstructionHead.for_model(model, num_heads=2), processing_class=processor,
        args=TrainingArguments("unused", use_cpu=True, report_to=[], remove_unused_columns=False),
    )
    wrapper = trainer.model.train()
    wrapper(**processor(text=["only text", "and more text"])).loss.backward()
    missing = [name for name, p in wrapper.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert not model.logit_scale.requires_grad  # the temperature is not reconstruction's
    assert not wrapper.head.image_output.weight.grad.any()


def test_two_processes_keep_the_head_in_sync(tiny_text_path, tmp_path) -> None:
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER, encoding="utf-8")
    run = torchrun_two_processes(runner, tiny_text_path, str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "find_unused_parameters" not in run.stderr  # every weight takes part: DDP searches for none
    ranks = [load_file(tmp_path / f"rank{rank}.safetensors") for rank in (0, 1)]
    assert any(name.startswith("head.") for name in ranks[0])
    for name, value in ranks[0].items():
        torch.testing.assert_close(ranks[1][name], value, atol=0, rtol=0, msg=name)
