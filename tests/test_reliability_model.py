"""Bad inputs to the model, its config and the ``unica init`` / ``unica encode`` commands: one clear error each."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_VIT
from PIL import Image

from configuration_unica import UniCAConfig
from unica.apps.cli import main as unica_main
from unica.checkpoint import init_model


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"image_size": -64}, r"vision_config\.image_size must be a positive integer, got -64"),
        ({"patch_size": 0}, r"vision_config\.patch_size must be a positive integer, got 0"),
        ({"image_size": 8, "patch_size": 16}, r"patch_size \(16\) is larger than vision_config\.image_size \(8\)"),
    ],
)
def test_vision_sizes_are_validated_in_the_config(overrides, message):
    with pytest.raises(ValueError, match=message):
        UniCAConfig(vision_config={"model_type": "vit", **TINY_VIT, **overrides})


def test_init_refuses_bad_preset_sizes_before_writing(minilm_path, tmp_path, capsys):
    for flag, value in (("--image-size", "-64"), ("--patch-size", "0")):
        with pytest.raises(SystemExit) as exit_info:  # argparse: one usage line naming the option
            unica_main(["init", str(tmp_path / "m"), "--text", minilm_path, flag, value])
        assert exit_info.value.code == 2
        assert f"argument {flag}: expected a positive integer" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"vision_config\.patch_size must be a positive integer, got 0"):
        init_model(minilm_path, "vit-micro", vision_config_overrides={**TINY_VIT, "patch_size": 0})
    assert not (tmp_path / "m").exists()


def test_forward_refuses_an_empty_batch(tiny_pair):
    model, _ = tiny_pair
    for inputs in ({"input_ids": torch.zeros(0, 4, dtype=torch.long)}, {"pixel_values": torch.zeros(0, 3, 32, 32)}):
        with pytest.raises(ValueError, match=r"empty batch \(0 items\)"):
            model(**inputs)


def test_forward_refuses_more_tokens_than_positions(tiny_pair):
    model, processor = tiny_pair
    positions = model.config.text_config.max_position_embeddings  # 512 for MiniLM
    image_tokens = model.config.num_image_tokens  # 16
    with pytest.raises(ValueError, match=rf"input_ids has {positions + 1} tokens, more than .* {positions} positions"):
        model(input_ids=torch.ones(1, positions + 1, dtype=torch.long))
    longest = positions - image_tokens
    with pytest.raises(ValueError, match=rf"plus {image_tokens} image tokens.*at most {longest} tokens"):
        model(input_ids=torch.ones(1, longest + 1, dtype=torch.long), pixel_values=torch.zeros(1, 3, 32, 32))
    # The limit itself is fine, and the processor never produces more than the model takes.
    with torch.no_grad():
        out = model(input_ids=torch.ones(1, longest, dtype=torch.long), pixel_values=torch.zeros(1, 3, 32, 32))
    assert out.embeddings.shape == (1, model.config.text_config.hidden_size)
    batch = processor(text=["word " * 2000], images=[Image.new("RGB", (32, 32))])
    assert batch["input_ids"].shape[1] + image_tokens <= positions


def test_encode_out_a_folder_is_refused_before_loading(tiny_checkpoint, tmp_path, caplog):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    code = unica_main(["encode", str(tiny_checkpoint), "--text", "a red circle", "--out", str(folder)])
    assert code == 1 and "is a folder; pass a file name" in caplog.text
    assert list(folder.iterdir()) == []
    # A name without .npy is written exactly as named (no second suffix) and nothing else is left beside it.
    target = tmp_path / "embeddings"
    assert unica_main(["encode", str(tiny_checkpoint), "--text", "a red circle", "--out", str(target)]) == 0
    assert np.load(target).shape == (1, 384)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-folder", "embeddings"]


def test_checkpoint_save_killed_at_random_points_never_leaves_a_loadable_half(minilm_path, tmp_path):
    """SIGKILL a process that saves checkpoints in a loop: every folder at a final name loads whole and
    computes what the reference computes; what the kill interrupted is only a hidden ``.partial-`` folder."""
    import random
    import signal
    import subprocess
    import sys
    import textwrap

    from unica.checkpoint import load_checkpoint

    script = textwrap.dedent(f"""
        import itertools, sys, torch
        from unica.checkpoint import init_model, save_checkpoint
        torch.manual_seed(0)
        model, processor = init_model({minilm_path!r}, "vit-micro", fusion="bica",
                                      vision_config_overrides={TINY_VIT!r})
        save_checkpoint(model, processor, {str(tmp_path / 'reference')!r}, overwrite=True)
        print("ready", flush=True)
        for n in itertools.count():
            save_checkpoint(model, processor, {str(tmp_path)!r} + f"/saved-{{sys.argv[1]}}-{{n}}")
    """)
    rng = random.Random(0)
    for run in range(2):
        process = subprocess.Popen([sys.executable, "-c", script, str(run)], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "ready"
        subprocess.run(["sleep", f"{rng.uniform(0.5, 2.0):.2f}"], check=True)
        process.send_signal(signal.SIGKILL)
        process.wait()
    model, processor = load_checkpoint(tmp_path / "reference")
    batch = processor(text=["a red circle"], images=[Image.new("RGB", (32, 32), "red")])
    with torch.no_grad():
        reference = model(**batch).embeddings
    # The newest complete save of each run (the one the kill came closest to) loads whole.
    newest = [max(tmp_path.glob(f"saved-{run}-*"), key=lambda p: int(p.name.rsplit("-", 1)[1])) for run in range(2)]
    for folder in newest:
        model, processor = load_checkpoint(folder)
        with torch.no_grad():
            assert torch.equal(model(**processor(text=["a red circle"], images=[Image.new("RGB", (32, 32), "red")])).embeddings, reference)
    partial = [p.name for p in tmp_path.iterdir() if ".partial-" in p.name]
    assert len(partial) <= 2 and all(name.startswith(".saved-") for name in partial)  # one per kill at most


def test_an_unloadable_vision_tower_is_one_line(minilm_path, tmp_path, caplog):
    code = unica_main(["init", str(tmp_path / "m"), "--text", minilm_path, "--vision", "unica-tests/no-such-tower"])
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert code == 1 and len(errors) == 1 and "\n" not in errors[0], errors
    assert "vision='unica-tests/no-such-tower' is not a preset" in errors[0]


def test_sentence_transformers_encodes_data_uri_images(tiny_checkpoint, tmp_path):
    import base64
    import io

    from sentence_transformers import SentenceTransformer

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buffer, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    path = tmp_path / "red.png"
    path.write_bytes(buffer.getvalue())
    model = SentenceTransformer(str(tiny_checkpoint), trust_remote_code=True)
    by_uri = model.encode([uri, {"text": "a red square", "image": uri}])
    by_file = model.encode([str(path), {"text": "a red square", "image": str(path)}])
    assert np.allclose(by_uri, by_file, atol=1e-6)
