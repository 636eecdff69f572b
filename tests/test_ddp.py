"""Data-parallel training with activation (gradient) checkpointing: every trainable parameter takes part in
every step's backward, so ``DistributedDataParallel`` runs with ``find_unused_parameters=False``.

Two sources of parameters without a gradient are covered: weights of a pretrained vision tower UniCA never
uses (CLIP's ``post_layernorm``, SigLIP's pooling ``head``, DINOv2's ``mask_token``: frozen when the model is
built or loaded), and the vision tower, visual projection and Bi-CA layers in a training batch without images
(tied into the graph with an exactly-zero term). Tiny components: a random 2-layer BERT and 32 px towers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_VIT, make_image
from safetensors.torch import load_file
from test_trainer import make_rows
from test_trainer_cli import write_config

from unica.checkpoint import init_model, load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
# Weights of each tower UniCA never uses (it reads the patch tokens of last_hidden_state only).
UNUSED = {"clip": ("post_layernorm.",), "siglip": ("head.",), "dinov2": ("embeddings.mask_token",), "vit": ()}

# Trains through `unica train` (the CLI, its process-group cleanup included) and writes each rank's final
# weights to output_dir/rank{N}.safetensors.
RUNNER = """
import sys

from safetensors.torch import save_file
from transformers import TrainerCallback

from unica.apps import train_cli
from unica.apps.cli import main


class SaveRankWeights(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        weights = {name: value.detach().contiguous() for name, value in model.state_dict().items()}
        save_file(weights, f"{args.output_dir}/rank{args.process_index}.safetensors")


build_trainer = train_cli.build_trainer
train_cli.build_trainer = lambda config: build_trainer(config, callbacks=[SaveRankWeights()])
sys.exit(main(["train", "--config", sys.argv[1]]))
"""


@pytest.fixture(scope="module")
def siglip_vision_path(tmp_path_factory) -> str:
    """A tiny random SigLIP vision tower (with its attention-pooling head) saved as a local folder."""
    from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    config = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=32, patch_size=8)
    assert config.vision_use_head
    folder = tmp_path_factory.mktemp("siglip-vision")
    SiglipVisionModel(config).save_pretrained(folder)
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def dinov2_vision_path(tmp_path_factory) -> str:
    """A tiny random DINOv2 tower (with its masked-image-modelling ``mask_token``) saved as a local folder."""
    from transformers import Dinov2Config, Dinov2Model, ViTImageProcessorPil

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, mlp_ratio=2, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                          patch_size=8)
    folder = tmp_path_factory.mktemp("dinov2")
    Dinov2Model(config).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


def build(tower: str, request, text: str):
    """(model, processor) with the named tiny tower and ``text`` as the text encoder."""
    torch.manual_seed(0)
    if tower == "vit":
        return init_model(text, "vit-micro", vision_config_overrides=TINY_VIT)
    return init_model(text, request.getfixturevalue(f"{tower}_vision_path"))


def _grads(model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor | None]:
    """Gradients of every trainable weight the embedding can reach (not ``logit_scale``: the loss's temperature,
    frozen by the trainer unless learnable_temperature, and then used by every step's loss)."""
    model.zero_grad(set_to_none=True)
    model(**batch).embeddings.pow(2).sum().backward()
    return {name: p.grad for name, p in model.named_parameters() if p.requires_grad and name != "logit_scale"}


def _unused(model: torch.nn.Module, tower: str) -> dict[str, torch.nn.Parameter]:
    prefixes = tuple(f"vision_model.{name}" for name in UNUSED[tower])
    return {name: p for name, p in model.named_parameters() if prefixes and name.startswith(prefixes)}


@pytest.mark.parametrize("tower", ["clip", "siglip", "dinov2", "vit"])
def test_every_trainable_parameter_gets_a_gradient_with_and_without_images(tower, request, tiny_text_path,
                                                                            tmp_path) -> None:
    model, processor = build(tower, request, tiny_text_path)
    unused = _unused(model, tower)
    assert bool(unused) == (tower != "vit")
    assert not any(p.requires_grad for p in unused.values())  # frozen: DDP leaves them out
    # from_pretrained puts loaded weights into new (trainable) Parameters: they are frozen again.
    loaded, _ = load_checkpoint(save_checkpoint(model, processor, tmp_path / "model"))
    assert _unused(loaded, tower).keys() == unused.keys()
    assert not any(p.requires_grad for p in _unused(loaded, tower).values())

    model.train()
    with_images = processor(text=["a red circle", None, "text"], images=[make_image(1), make_image(2), None])
    assert all(grad is not None for grad in _grads(model, with_images).values())

    text_only = processor(text=["only text", "more text here"])
    grads = _grads(model, text_only)
    assert all(grad is not None for grad in grads.values())
    untouched = [name for name in grads if not name.startswith("text_model.")]
    assert len(untouched) > 10 and all(not grads[name].any() for name in untouched)  # exactly zero
    with torch.no_grad():  # the tie is an exact zero: the embeddings are those of evaluation mode
        trained = model(**text_only).embeddings
        torch.testing.assert_close(model.eval()(**text_only).embeddings, trained, atol=0, rtol=0)


def _rows(image_dir: Path) -> list[dict]:
    """Rows 0-3 have images (the first step), rows 4-7 are text only (the second step)."""
    text_only = [{"qid": f"t{i}", "query_text": f"question {i}", "query_image": None, "pos_text": f"answer {i}",
                  "pos_image": None, "neg_text": f"a wrong answer {i}", "neg_image": None} for i in range(4)]
    return make_rows(4, image_dir=image_dir) + text_only


def torchrun_two_processes(script: Path, *arguments: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node 2 script arguments``; on a timeout (a collective that
    waits forever) the launcher and both workers are killed, not left running."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
               *arguments]
    with subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            pytest.fail(f"torchrun did not finish in {timeout} s (a collective waiting forever?): {stderr[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


# SigLIP runs through the GradCache-style loss: its replayed chunks reach DDP one by one, and the last one,
# the only one that synchronises, may be text only.
@pytest.mark.parametrize(("tower", "cache_chunk_size"), [("clip", None), ("siglip", 1)])
def test_two_processes_with_checkpointing_train_image_and_text_only_batches(tower, cache_chunk_size, request,
                                                                            tiny_text_path, tmp_path) -> None:
    model, processor = build(tower, request, tiny_text_path)
    checkpoint = save_checkpoint(model, processor, tmp_path / "model")
    (tmp_path / "images").mkdir()
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in _rows(tmp_path / "images")), encoding="utf-8")
    # Two ranks x 2 rows, in order: step 1 has images, step 2 is text only, step 3 has images again.
    config = write_config(tmp_path / "train.yaml", str(checkpoint), data, output_dir=str(tmp_path / "out"),
                          max_steps=3, activation_checkpointing=True, train_sampling_strategy="sequential",
                          cache_chunk_size=cache_chunk_size, ddp_timeout=120)
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER, encoding="utf-8")
    run = torchrun_two_processes(runner, str(config))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "find_unused_parameters" not in run.stderr

    initial = load_file(checkpoint / "model.safetensors")
    ranks = [load_file(tmp_path / "out" / f"rank{rank}.safetensors") for rank in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() == initial.keys()
    for name in initial:
        torch.testing.assert_close(ranks[1][name], ranks[0][name], atol=0, rtol=0, msg=name)
    changed = {name for name in initial if not torch.equal(ranks[0][name], initial[name])}
    assert any(name.startswith("vision_model.encoder.") for name in changed)
    assert any(name.startswith("fusion_encoder.") for name in changed)
    assert not changed & _unused(model, tower).keys()
