"""CoCoA pre-training (unica.cocoa): each stage's loss falls on the fixture; stage 2 reads the encoder only through
[CLS]; masks follow the items, not the batch; two processes make the update of one process on the concatenated
batch (heads and decoder inside DDP, clipped); resuming restores the model and the heads exactly; bad settings
fail with the key named. Tiny components: a random 2-layer BERT (hidden 32) and a 32 px ViT (16 patches)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_VIT
from safetensors.torch import load_file
from test_ddp import torchrun_two_processes
from test_trainer_cli import StopAfter
from transformers import TrainingArguments

from dataset_builders import load_scenes
from unica.checkpoint import init_model, load_checkpoint
from unica.cocoa import (
    HEADS_FILE,
    CoCoAPretrainingModel,
    CoCoASettings,
    CoCoATrainer,
    ItemCollator,
    check_decoder_fits,
    mask_pixels,
    patch_grid,
    patchify,
)

FIXTURE = Path(__file__).parent / "fixtures" / "scenes"

# One optimiser step of each stage with plain SGD and an active clip (max_grad_norm below the gradient's norm), on
# the same 4 rows: one process with batches of 4 (argv[3] == "1") or, under torchrun, two with batches of 2. Writes
# each rank's model + heads weights and the logged gradient norms.
RUNNER = f"""
import json
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from transformers import TrainingArguments

from dataset_builders import load_scenes
from unica.checkpoint import init_model
from unica.cocoa import CoCoASettings, CoCoATrainer

text, out, processes = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
model, processor = init_model(text, "vit-micro", fusion="bica", pooling="cls", vision_config_overrides={TINY_VIT!r})
distributed = processes > 1
args = TrainingArguments(out, per_device_train_batch_size=4 // processes, learning_rate=0.5, optim="sgd",
                         lr_scheduler_type="constant", max_grad_norm=0.5, weight_decay=0.0, use_cpu=True,
                         report_to=[], save_strategy="no", seed=0, logging_steps=1, dataloader_pin_memory=False,
                         disable_tqdm=True, **(dict(ddp_backend="gloo") if distributed else {{}}))
rows = load_scenes({str(FIXTURE)!r}, split="train").select([1, 2, 3, 4])
trainer = CoCoATrainer(model=model, args=args, settings=CoCoASettings(stage1_steps=1, stage2_steps=1),
                       train_dataset=rows, processing_class=processor)
trainer.train()
weights = {{f"heads.{{k}}": v.detach().clone() for k, v in trainer.heads.state_dict().items()}}
weights.update({{f"model.{{k}}": v.detach().clone() for k, v in model.state_dict().items()}})
save_file(weights, f"{{out}}/rank{{args.process_index}}.safetensors")
norms = [entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry]
json.dump(norms, open(f"{{out}}/norms{{args.process_index}}.json", "w"))
if distributed:
    dist.barrier()
    trainer.accelerator.free_memory()
    dist.destroy_process_group()
"""


def build(text: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return init_model(text, "vit-micro", fusion="bica", pooling="cls", vision_config_overrides=TINY_VIT, **overrides)


def fixture_rows(count: int = 16):
    return load_scenes(FIXTURE, split="train").select(range(count))


def wrap(model, processor, settings: CoCoASettings) -> CoCoAPretrainingModel:
    tokenizer = processor.tokenizer
    return CoCoAPretrainingModel(model, settings.build_heads(model), settings, tokenizer.mask_token_id,
                                 tokenizer.all_special_ids)


def losses(wrapper: CoCoAPretrainingModel, batch: dict, stage: int) -> tuple[float, float]:
    """(text loss, image loss) of ``stage`` on ``batch``, with fixed masks (step 0, seed 0), in evaluation mode."""
    wrapper.eval()
    with torch.no_grad():
        out = wrapper(**batch, stage=stage, step=0, seed=0)
    wrapper.train()
    return float(out.text_loss), float(out.image_loss)


@pytest.mark.parametrize("stage", [1, 2])
def test_each_stage_loss_falls_on_the_fixture(stage, tiny_text_path, tmp_path) -> None:
    model, processor = build(tiny_text_path)
    rows = fixture_rows()
    batch = ItemCollator(processor)([rows[i] for i in range(8)])
    assert bool(batch["image_mask"].any()) and not bool(batch["image_mask"].all())  # a mixed batch
    settings = CoCoASettings(stage1_steps=12 if stage == 1 else 0, stage2_steps=12 if stage == 2 else 0)
    args = TrainingArguments(str(tmp_path / "run"), per_device_train_batch_size=8, learning_rate=1e-2, report_to=[],
                             logging_steps=4, save_strategy="no", use_cpu=True, seed=0, dataloader_pin_memory=False,
                             disable_tqdm=True)
    trainer = CoCoATrainer(model=model, args=args, settings=settings, train_dataset=rows, processing_class=processor)
    assert trainer.args.max_steps == 12 and (trainer.heads.decoder is not None) == (stage == 2)
    text_before, image_before = losses(trainer.model, batch, stage)
    trainer.train()
    text_after, image_after = losses(trainer.model, batch, stage)
    assert text_after < text_before - 1.0, (text_before, text_after)  # nats per hidden token
    assert image_after < 0.7 * image_before, (image_before, image_after)  # squared error per pixel value
    assert {entry["stage"] for entry in trainer.state.log_history if "stage" in entry} == {float(stage)}


def _perturb_encoder_outputs(model, positions: slice):
    """A hook adding large noise to the text encoder's output states at ``positions`` (every row, both the fused
    and the text-only path go through ``text_model.encoder``)."""
    generator = torch.Generator().manual_seed(0)

    def hook(module, args, output):
        states = output.last_hidden_state.clone()
        noise = 10 * torch.randn(states.shape, generator=generator)
        states[:, positions] += noise[:, positions]
        output.last_hidden_state = states
        return output

    return model.text_model.encoder.register_forward_hook(hook)


def test_stage2_reads_the_encoder_only_through_cls(tiny_text_path) -> None:
    model, processor = build(tiny_text_path)
    wrapper = wrap(model, processor, CoCoASettings(stage1_steps=1, stage2_steps=1)).eval()
    rows = fixture_rows(8)
    batch = ItemCollator(processor)([rows[i] for i in range(6)])
    assert bool(batch["image_mask"].any()) and not bool(batch["image_mask"].all())

    def run(stage: int, positions: slice | None = None):
        handle = _perturb_encoder_outputs(model, positions) if positions is not None else None
        try:
            with torch.no_grad():
                return wrapper.reconstruct(batch, stage=stage, step=3, seed=0)
        finally:
            if handle is not None:
                handle.remove()

    reference = run(2)
    assert reference.token_logits.shape[0] > 10 and reference.patch_predictions.shape[0] > 10
    others = run(2, slice(1, None))  # every output but [CLS] (image tokens and text tokens) changed
    torch.testing.assert_close(others.token_logits, reference.token_logits, atol=0, rtol=0)
    torch.testing.assert_close(others.patch_predictions, reference.patch_predictions, atol=0, rtol=0)
    through_cls = run(2, slice(0, 1))  # the bridge itself changed: the reconstructions follow
    assert (through_cls.token_logits - reference.token_logits).abs().max() > 1e-4
    assert (through_cls.patch_predictions - reference.patch_predictions).abs().max() > 1e-4
    # The hook does change what reads the other outputs: stage 1 predicts from them.
    stage1, stage1_changed = run(1), run(1, slice(1, None))
    assert (stage1_changed.token_logits - stage1.token_logits).abs().max() > 1e-2
    assert (stage1_changed.patch_predictions - stage1.patch_predictions).abs().max() > 1e-2


def test_masks_follow_the_items_not_the_batch(tiny_text_path) -> None:
    model, processor = build(tiny_text_path)
    settings = CoCoASettings(stage1_steps=1, text_mask_ratio=0.4, image_mask_ratio=0.5)
    wrapper = wrap(model, processor, settings)
    items = ["a small red circle at the top left of the picture", {"text": "a blue square", "image": "x"}, "tiny"]
    rows = fixture_rows(4)
    items[1]["image"] = rows[0]["pos_image"]
    together = processor.process_items(items)
    other = processor.process_items([items[2], items[0]])  # another batch: other padding, place and neighbours
    text_mask, patch_mask = wrapper.masks(dict(together), stage=1, step=5, seed=0)
    other_text, _ = wrapper.masks(dict(other), stage=1, step=5, seed=0)
    length = int(other["attention_mask"][1].sum())
    assert torch.equal(other_text[1, :length], text_mask[0, :length]) and text_mask[0, length:].sum() == 0
    special = torch.isin(together["input_ids"], torch.tensor(processor.tokenizer.all_special_ids))
    real = together["attention_mask"].bool() & ~special
    assert not (text_mask & ~real).any()  # never [CLS], [SEP] or padding
    assert text_mask.sum(1).tolist() == [max(1, round(0.4 * int(n))) for n in real.sum(1)]
    assert patch_mask.shape == (1, 16) and int(patch_mask.sum()) == 8
    other_step, _ = wrapper.masks(dict(together), stage=1, step=6, seed=0)
    assert not torch.equal(other_step, text_mask)  # a new draw every step
    # Blanked patches are exactly the masked ones, in the tower's row-major patch order.
    pixels = together["pixel_values"]
    patch, side = patch_grid(model.config)
    assert (patch, side) == (8, 4)
    blanked = patchify(mask_pixels(pixels, patch_mask, patch), patch)
    assert torch.equal(blanked[patch_mask], torch.zeros_like(blanked[patch_mask]))
    assert torch.equal(blanked[~patch_mask], patchify(pixels, patch)[~patch_mask])


@pytest.mark.parametrize("stage", [1, 2])
def test_a_text_only_step_gives_every_trainable_weight_a_gradient(stage, tiny_text_path) -> None:
    """What data-parallel training without unused-parameter search needs (the decoder in stage 1 included)."""
    model, processor = build(tiny_text_path)
    wrapper = wrap(model, processor, CoCoASettings(stage1_steps=1, stage2_steps=1)).train()
    batch = ItemCollator(processor)([{"text": "only text here"}, {"text": "and more text"}])
    wrapper(**batch, stage=stage).loss.backward()
    missing = [name for name, p in wrapper.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert not model.logit_scale.requires_grad  # the temperature is not reconstruction's
    assert not wrapper.heads.patch_head.output.weight.grad.any()  # no image: an exact zero
    used = wrapper.heads.decoder.layers.layers[0].linear1.weight.grad
    assert bool(used.any()) == (stage == 2)


def test_two_processes_make_the_update_of_one_process_on_the_concatenated_batch(tiny_text_path, tmp_path) -> None:
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER, encoding="utf-8")
    (tmp_path / "one").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    single = subprocess.run([sys.executable, str(runner), tiny_text_path, str(tmp_path / "one"), "1"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    run = torchrun_two_processes(runner, tiny_text_path, str(tmp_path / "two"), "2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "find_unused_parameters" not in run.stderr  # every weight takes part: DDP searches for none

    one = load_file(tmp_path / "one" / "rank0.safetensors")
    ranks = [load_file(tmp_path / "two" / f"rank{rank}.safetensors") for rank in (0, 1)]
    norms = json.loads((tmp_path / "one" / "norms0.json").read_text())
    assert len(norms) == 2 and min(norms) > 0.5  # the clip (max_grad_norm=0.5) was active in both steps
    assert json.loads((tmp_path / "two" / "norms0.json").read_text()) == pytest.approx(norms, rel=1e-4)
    assert any(name.startswith("heads.decoder.") for name in one)
    for name, value in ranks[0].items():
        torch.testing.assert_close(ranks[1][name], value, atol=0, rtol=0, msg=name)  # the ranks agree exactly
        torch.testing.assert_close(value, one[name], atol=2e-6, rtol=1e-4, msg=name)  # ... with one process
    model = build(tiny_text_path)[0]  # the runner's initial weights: the same seed, then the heads
    heads = CoCoASettings(stage1_steps=1, stage2_steps=1).build_heads(model)
    initial = {**{f"model.{k}": v for k, v in model.state_dict().items()},
               **{f"heads.{k}": v for k, v in heads.state_dict().items()}}
    assert initial.keys() == one.keys()
    changed = {name for name in initial if not torch.equal(one[name], initial[name])}
    for part in ("model.vision_model.layers.", "model.text_model.encoder.", "model.fusion_encoder.",
                 "heads.decoder.", "heads.token_head.", "heads.patch_head."):
        assert any(name.startswith(part) for name in changed), part


def _run(text: str, output_dir: Path, seed: int, callbacks=(), resume: str | None = None):
    """2 steps of stage 1 then 2 of stage 2, saving checkpoint-2 and checkpoint-4; (model, trainer) after it."""
    model, processor = build(text, seed=seed)
    args = TrainingArguments(str(output_dir), per_device_train_batch_size=4, learning_rate=1e-3, report_to=[],
                             save_strategy="steps", save_steps=2, logging_steps=1, use_cpu=True, seed=0,
                             dataloader_pin_memory=False, disable_tqdm=True)
    trainer = CoCoATrainer(model=model, args=args, settings=CoCoASettings(stage1_steps=2, stage2_steps=2),
                           train_dataset=fixture_rows(), processing_class=processor, callbacks=list(callbacks))
    trainer.train(resume_from_checkpoint=resume)
    return model, trainer


def test_resume_at_the_stage_boundary_restores_the_model_and_heads_exactly(tiny_text_path, tmp_path) -> None:
    full_model, full = _run(tiny_text_path, tmp_path / "full", seed=0)
    _run(tiny_text_path, tmp_path / "cut", seed=0, callbacks=[StopAfter(2)])
    checkpoint = tmp_path / "cut" / "checkpoint-2"
    assert (checkpoint / HEADS_FILE).is_file()
    saved, _ = load_checkpoint(checkpoint)  # a UniCA checkpoint folder, loaded strictly
    # ViT's keys are renamed on save: a raw state-dict load of the file would miss the tower.
    assert set(load_file(checkpoint / "model.safetensors")) != set(saved.state_dict())
    # Another seed: every resumed weight must come from the checkpoint; steps 3 and 4 are stage 2.
    model, resumed = _run(tiny_text_path, tmp_path / "cut", seed=1, resume=str(checkpoint))
    assert [e["stage"] for e in resumed.state.log_history if "stage" in e][-1] == 2.0
    for ours, reference in ((model.state_dict(), full_model.state_dict()),
                            (resumed.heads.state_dict(), full.heads.state_dict())):
        for name in sorted(reference, key=lambda name: not name.startswith("vision_model.")):  # the tower first
            torch.testing.assert_close(ours[name], reference[name], atol=1e-6, rtol=1e-5, msg=name)

    full.save_model()  # the final model goes into output_dir beside the checkpoints, which stay
    assert (tmp_path / "full" / "checkpoint-4" / HEADS_FILE).is_file()
    assert not (tmp_path / "full" / HEADS_FILE).exists()
    final, _ = load_checkpoint(tmp_path / "full")
    assert not any("decoder" in name or "heads" in name for name in final.state_dict())
    torch.testing.assert_close(final.visual_projection.proj.weight, full_model.visual_projection.proj.weight)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("key", "value"), [("text_mask_ratio", 1.0), ("image_mask_ratio", -0.1),
                                            ("decoder_text_mask_ratio", 1.5), ("decoder_image_mask_ratio", "half")])
def test_a_mask_ratio_outside_0_1_names_the_key(key, value) -> None:
    with pytest.raises(ValueError, match=rf"pretrain\.{key}={value!r} is not a mask ratio: use a number in \[0, 1\)"):
        CoCoASettings(stage1_steps=1, stage2_steps=1, **{key: value})


def test_other_bad_settings_name_the_key_and_the_fix() -> None:
    with pytest.raises(ValueError, match="stage1_steps and pretrain.stage2_steps are both 0"):
        CoCoASettings()
    with pytest.raises(ValueError, match="text_mask_ratio and pretrain.image_mask_ratio are both 0: stage 1 hides "
                                         "nothing"):
        CoCoASettings(stage1_steps=1, text_mask_ratio=0, image_mask_ratio=0)
    CoCoASettings(stage2_steps=1, text_mask_ratio=0, image_mask_ratio=0)  # stage 1 does not run: fine
    with pytest.raises(ValueError, match=r"decoder_hidden_size=64 does not fit the encoder, whose hidden size is 32.*"
                                         r"set decoder_hidden_size: 32 or leave it out"):
        check_decoder_fits(32, 64, None)
    with pytest.raises(ValueError, match=r"decoder_heads=3 must divide the decoder width 32"):
        check_decoder_fits(32, None, 3)
    with pytest.raises(ValueError, match=r"sides=\['query', 'answer'\]"):
        CoCoASettings(stage1_steps=1, sides=["query", "answer"])


def test_patch_reconstruction_without_images_or_pixel_patches_is_refused(tiny_text_path, tmp_path) -> None:
    model, processor = build(tiny_text_path)
    text_rows = [{"text": f"caption number {i}"} for i in range(4)]
    args = TrainingArguments(str(tmp_path / "o"), use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match=r"no training row has an image.*set pretrain.image_mask_ratio: 0 and "
                                         r"pretrain.decoder_image_mask_ratio: 0"):
        CoCoATrainer(model=model, args=args, settings=CoCoASettings(stage1_steps=1), train_dataset=text_rows,
                     processing_class=processor)
    text_only = CoCoASettings(stage1_steps=1, stage2_steps=1, image_mask_ratio=0, decoder_image_mask_ratio=0)
    trainer = CoCoATrainer(model=model, args=args, settings=text_only, train_dataset=text_rows,
                           processing_class=processor)
    assert trainer.heads.patch_head is None and trainer.heads.decoder.patch_embedding is None
    with pytest.raises(ValueError, match="pixel_values.*this batch has no images"):
        patchify(None, 8)
    model.config.vision_config.patch_size = 5  # 32 px do not make 5 px patches: no pixel grid to match
    with pytest.raises(ValueError, match=r"patch_size=5.*set pretrain.image_mask_ratio and "
                                         r"pretrain.decoder_image_mask_ratio to 0"):
        CoCoASettings(stage1_steps=1).build_heads(model)
