"""A normal ``unica`` run prints only what a user can act on; ``-v`` shows everything.

The end-to-end check runs ``python -m unica evaluate`` on a small scenes evaluation set; the sources of
the noise are checked one by one: the pooler's LOAD REPORT (text encoder and checkpoint paths), staging
folders in log lines, and the rank / verbosity levels of ``configure_logging``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_VIT
from safetensors.torch import load_file, save_file

from unica.apps.logs import PROJECT_LOGGERS, configure_logging, process_rank

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = ("faiss.loader", "LOAD REPORT", "UNEXPECTED", "Loading weights", "Writing model shards", "Generating",
             ".partial-", ".unica-save-", "Traceback")
MAX_LINES = 8  # 1 task: its "N queries" line, 2 encoding bars, the "wrote" line, the metrics line (+ margin)


def _run_unica(*args: str) -> tuple[int, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": str(REPO)}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "unica", *args], cwd=REPO, env=env, capture_output=True, timeout=300)
    # Bytes, decoded as they are: text=True would turn a progress bar's "\r" updates into lines.
    return done.returncode, (done.stdout + done.stderr).decode("utf-8", errors="replace")


@pytest.fixture(scope="module")
def small_eval_set(tmp_path_factory) -> Path:
    from dataset_builders.evaluation import build_evaluation_sets
    from dataset_builders.scenes import generate_scenes

    root = tmp_path_factory.mktemp("quiet")
    generate_scenes(root / "scenes", num_scenes=40, seed=0, image_size=32, progress=False)
    build_evaluation_sets(root / "scenes", root / "eval", dataset="scenes", tasks=(2,))
    return root / "eval"


def test_evaluate_prints_only_actionable_lines_and_verbose_shows_more(tiny_checkpoint, small_eval_set, tmp_path):
    code, output = _run_unica("evaluate", str(tiny_checkpoint), "--dataset", str(small_eval_set), "--out",
                              str(tmp_path / "results"))
    assert code == 0, output
    lines = [line for line in output.replace("\r", "\n").splitlines() if line.strip()]
    assert [word for word in FORBIDDEN if word in output] == [], output
    assert output.count("\n") <= MAX_LINES, output
    assert sum(line.startswith("INFO unica: task2: hit@1 ") for line in lines) == 1, output

    code, verbose = _run_unica("-v", "evaluate", str(tiny_checkpoint), "--dataset", str(small_eval_set), "--out",
                               str(tmp_path / "results-v"))
    assert code == 0, verbose
    assert "faiss.loader" in verbose and "DEBUG " in verbose and "Loading weights" in verbose
    assert verbose.count("\n") > 10 * output.count("\n")


def _load_reports() -> tuple[logging.Handler, list[str]]:
    """Collect the messages transformers' loading code logs (its LOAD REPORT tables among them)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logging.getLogger("transformers.modeling_utils").addHandler(handler)
    return handler, messages


def test_text_encoder_loads_without_the_pooler_report(minilm_path, tmp_path):
    """all-MiniLM-L6-v2's file holds BERT's pooler, which UniCA leaves out: no report. Other weight problems
    are still reported."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from unica.checkpoint import init_model

    handler, messages = _load_reports()
    try:
        torch.manual_seed(0)
        model, _ = init_model(minilm_path, "vit-micro", fusion="concat", vision_config_overrides=TINY_VIT)
        assert not any("LOAD REPORT" in message for message in messages), messages
        assert not any("pooler" in name for name, _ in model.named_parameters())
        # A text encoder whose file holds a layer its config has no place for: reported.
        config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
        BertModel(config).save_pretrained(tmp_path / "bert")
        AutoTokenizer.from_pretrained(minilm_path).save_pretrained(tmp_path / "bert")
        weights = load_file(tmp_path / "bert" / "model.safetensors")
        weights["encoder.layer.9.extra.weight"] = torch.zeros(2)
        save_file(weights, tmp_path / "bert" / "model.safetensors", metadata={"format": "pt"})
        init_model(str(tmp_path / "bert"), "vit-micro", fusion="concat", vision_config_overrides=TINY_VIT)
    finally:
        logging.getLogger("transformers.modeling_utils").removeHandler(handler)
    reports = [message for message in messages if "LOAD REPORT" in message]
    assert len(reports) == 1 and "encoder.layer.9.extra.weight" in reports[0]  # transformers' own table, unchanged


def test_checkpoint_with_a_text_pooler_loads_without_report(tiny_checkpoint, tmp_path):
    """A checkpoint whose text model kept BERT's pooler weights loads (they are skipped) without a report."""
    import shutil

    from unica.checkpoint import load_checkpoint

    folder = tmp_path / "with-pooler"
    shutil.copytree(tiny_checkpoint, folder)
    weights = load_file(folder / "model.safetensors")
    hidden = weights["text_model.embeddings.word_embeddings.weight"].shape[1]
    weights["text_model.pooler.dense.weight"] = torch.zeros(hidden, hidden)
    weights["text_model.pooler.dense.bias"] = torch.zeros(hidden)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    handler, messages = _load_reports()
    try:
        model, _ = load_checkpoint(folder)
    finally:
        logging.getLogger("transformers.modeling_utils").removeHandler(handler)
    assert not any("LOAD REPORT" in message for message in messages), messages
    reference, _ = load_checkpoint(tiny_checkpoint)
    for (name, value), (_, expected) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(value, expected), name


def test_saving_into_an_existing_folder_logs_the_final_path_only(tiny_pair, tmp_path, caplog):
    from unica.checkpointing import STAGING_PREFIX, write_checkpoint_folder

    model, processor = tiny_pair
    target = tmp_path / "output_dir"
    target.mkdir()
    (target / "checkpoint-1").mkdir()  # an output_dir with resume states: filled, not replaced
    with caplog.at_level(logging.INFO, logger="unica"):
        write_checkpoint_folder(target, model, processor)
    saved = [r.getMessage() for r in caplog.records if "saved UniCA checkpoint" in r.getMessage()]
    assert saved == [f"saved UniCA checkpoint to {target}"]
    assert STAGING_PREFIX not in caplog.text and (target / "model.safetensors").is_file()


@pytest.mark.parametrize("env, verbose, expected", [
    ({}, False, logging.INFO),
    ({"RANK": "0", "LOCAL_RANK": "0"}, False, logging.INFO),
    ({"RANK": "1", "LOCAL_RANK": "1"}, False, logging.WARNING),
    ({"LOCAL_RANK": "3"}, False, logging.WARNING),
    ({"RANK": "1"}, True, logging.DEBUG),
])
def test_rank_zero_logs_info_others_warnings_verbose_everything(monkeypatch, env, verbose, expected):
    from transformers.utils import logging as transformers_logging

    for name in ("RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    before = {name: logging.getLogger(name).level for name in ("", *PROJECT_LOGGERS)}
    bars = transformers_logging.is_progress_bar_enabled()
    restore = configure_logging(verbose=verbose)
    try:
        assert process_rank() == int(env.get("RANK", env.get("LOCAL_RANK", 0)))
        for name in PROJECT_LOGGERS:
            assert logging.getLogger(name).getEffectiveLevel() == expected, name
        # Other libraries (faiss' loader among them): warnings only, unless verbose.
        assert logging.getLogger("faiss.loader").getEffectiveLevel() == (logging.DEBUG if verbose else logging.WARNING)
        assert transformers_logging.is_progress_bar_enabled() is verbose
    finally:
        restore()
    assert {name: logging.getLogger(name).level for name in ("", *PROJECT_LOGGERS)} == before
    assert transformers_logging.is_progress_bar_enabled() is bars
