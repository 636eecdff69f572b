"""The ``unica`` command line explains itself: help with defaults on every option, one ``--tasks`` format,
failing checks before any model is loaded, a parser that imports no heavy library, ``init --vision-config``,
and every ``evaluate --k`` cut-off reported."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unica.apps.cli import build_parser
from unica.apps.cli import main as cli
from unica.apps.options import task_ids

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "scenes"
HEAVY = ("torch", "transformers", "datasets", "faiss", "numpy")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "PYTHONPATH": str(REPO)}


def _python(code: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _subparsers(parser: argparse.ArgumentParser, path: str = "unica"):
    """(command path, parser) for the parser and every sub-parser, at any depth."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, f"{path} {name}")


# ---------------------------------------------------------------------- B4: a light parser, a lazy package
def test_building_the_parser_and_importing_unica_load_no_heavy_library():
    code = ("import json, sys; from unica.apps.cli import build_parser; build_parser(); import unica; "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    assert json.loads(_python(code)) == []
    done = subprocess.run([sys.executable, "-m", "unica", "--help"], cwd=REPO, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0 and "evaluate" in done.stdout and "build-dataset" in done.stdout


def test_lazy_package_exports_still_work_and_register_the_auto_classes():
    code = """
import json, sys
import unica
light = "torch" not in sys.modules
from unica import init_model, UniCAModel
from transformers import AutoConfig, AutoModel
import modeling_unica
config = AutoConfig.for_model("unica")  # registered by using a model name of unica
print(json.dumps({"light": light, "model": unica.UniCAModel is modeling_unica.UniCAModel,
                  "auto": AutoModel._model_mapping[type(config)] is UniCAModel,
                  "init": init_model.__module__, "dir": "save_checkpoint" in dir(unica)}))
"""
    assert json.loads(_python(code)) == {"light": True, "model": True, "auto": True, "init": "unica.checkpoint",
                                         "dir": True}
    import unica

    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        unica.nothing  # noqa: B018


def test_parser_choices_match_the_model_code():
    from configuration_unica import FUSIONS, POOLINGS
    from modeling_unica import VISION_PRESETS
    from unica.apps import options

    assert options.FUSIONS == FUSIONS and options.POOLINGS == POOLINGS
    assert options.VISION_PRESET_NAMES == tuple(VISION_PRESETS)


# ---------------------------------------------------------------------- B1: help text and defaults everywhere
def test_every_option_of_every_command_has_help_showing_its_default(monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")  # no wrapping (argparse breaks lines at hyphens)
    checked = 0
    for path, parser in _subparsers(build_parser()):
        text = " ".join(parser.format_help().split())  # unwrapped
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name = "/".join(action.option_strings) or action.dest
            assert action.help and action.help.strip(), f"{path} {name} has no help"
            flag = action.nargs == 0
            if action.default is not None and not flag:
                assert f"(default: {action.default})" in text, f"{path} {name}: default {action.default!r} not shown"
            checked += 1
    assert checked > 60  # every command's options were walked


# ---------------------------------------------------------------------- B2: one --tasks format
@pytest.mark.parametrize("argv, expected", [
    (["--tasks", "1,2"], [1, 2]),
    (["--tasks", "1", "2"], [1, 2]),
    (["--tasks", "task1", "webqa_task2"], [1, 2]),
    (["--tasks", "task2,7", "0", "task2"], [2, 7, 0]),  # repeated ids once
    (["--tasks", "TASK3 , 4"], [3, 4]),
])
def test_tasks_take_one_format_in_every_command(argv, expected, tmp_path):
    parser = build_parser()
    common = ["--out", str(tmp_path / "o"), "--mbeir-root", str(tmp_path)]
    assert parser.parse_args(["evaluate", "ckpt", "--dataset", "d", "--out", "o", *argv]).tasks == expected
    assert parser.parse_args(["build-dataset", "webqa", *common, *argv]).tasks == expected
    assert parser.parse_args(["build-dataset", "mbeir-eval", *common, "--dataset", "scenes", *argv]).tasks == expected
    # Defaults: every task of the folder (evaluate), WebQA's tasks 1 and 2 (webqa).
    assert parser.parse_args(["evaluate", "ckpt", "--dataset", "d", "--out", "o"]).tasks is None
    assert parser.parse_args(["build-dataset", "webqa", *common]).tasks == [1, 2]


def test_a_bad_task_is_a_one_line_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["evaluate", "ckpt", "--dataset", "d", "--out", "o", "--tasks", "2,foo"])
    assert exited.value.code == 2
    assert "argument --tasks: expected task ids such as 2, task2 or webqa_task2" in capsys.readouterr().err
    assert task_ids("mbeir_webqa_task2") == [2]
    with pytest.raises(argparse.ArgumentTypeError):
        task_ids(" , ")


def test_mbeir_eval_and_evaluate_take_the_same_task_list(tiny_checkpoint, tmp_path, caplog):
    out = tmp_path / "eval"
    assert cli(["build-dataset", "mbeir-eval", "--mbeir-root", str(FIXTURE), "--dataset", "scenes", "--tasks",
                "task7,2", "--out", str(out)]) == 0
    assert {p.name for p in (out / "data").iterdir()} == {f"task{t}_{table}" for t in (2, 7)
                                                          for table in ("queries", "corpus", "qrels")}
    # The same list selects the tasks to evaluate (task9 is not in the folder: named in the error).
    assert cli(["evaluate", str(tiny_checkpoint), "--dataset", str(out), "--out", str(tmp_path / "r"), "--tasks",
                "task7,9"]) == 1
    assert "unknown task 'task9'" in caplog.text


# ---------------------------------------------------------------------- B3: failing checks come first
def test_failing_checks_run_before_any_model_is_loaded(tiny_checkpoint, tmp_path):
    """Each case fails with one error line naming its input; the process never imports torch nor the model code
    (so no model was built or loaded) and writes no output."""
    existing = tmp_path / "existing"
    existing.mkdir()
    missing = tmp_path / "missing"
    not_checkpoint = tmp_path / "not-a-checkpoint"
    not_checkpoint.mkdir()
    weights = tmp_path / "vista.pth"
    weights.write_bytes(b"")
    cases = {
        "init into an existing folder": (["init", str(existing)], str(existing)),
        "evaluate without its dataset": (["evaluate", str(tiny_checkpoint), "--dataset", str(missing / "eval"),
                                          "--out", str(tmp_path / "results-1")], str(missing / "eval")),
        "evaluate without its checkpoint": (["evaluate", str(missing / "ckpt"), "--dataset", str(existing),
                                             "--out", str(tmp_path / "results-2")], str(missing / "ckpt")),
        "evaluate a folder that is no checkpoint": (["evaluate", str(not_checkpoint), "--dataset", str(existing),
                                                     "--out", str(tmp_path / "results-3")], str(not_checkpoint)),
        "encode a missing image": (["encode", str(tiny_checkpoint), "--image", str(missing / "a.png"), "--out",
                                    str(tmp_path / "emb.npy")], str(missing / "a.png")),
        "encode without its checkpoint": (["encode", str(missing / "ckpt"), "--text", "a", "--out",
                                           str(tmp_path / "emb.npy")], str(missing / "ckpt")),
        "encode a missing JSONL": (["encode", str(tiny_checkpoint), "--jsonl", str(missing / "r.jsonl"), "--out",
                                    str(tmp_path / "emb.npy")], str(missing / "r.jsonl")),
        "build into an existing folder": (["build-dataset", "mbeir-eval", "--mbeir-root", str(FIXTURE), "--dataset",
                                           "scenes", "--tasks", "2", "--out", str(existing)], str(existing)),
        "build without its M-BEIR root": (["build-dataset", "webqa", "--mbeir-root", str(missing / "mbeir"),
                                           "--out", str(tmp_path / "webqa")], str(missing / "mbeir")),
        "convert into an existing folder": (["convert-vista", str(weights), "--text", "bert", "--out",
                                             str(existing)], str(existing)),
        "card without its checkpoint": (["card", str(missing / "ckpt")], str(missing / "ckpt")),
        "ablate without its config": (["ablate", "--config", str(missing / "grid.yaml"), "--out",
                                       str(tmp_path / "ablation")], str(missing / "grid.yaml")),
    }
    code = """
import json, logging, sys
messages = []
class Collect(logging.Handler):
    def emit(self, record):
        messages.append(record.getMessage())
logging.getLogger().addHandler(Collect())
from unica.apps.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    messages.clear()
    results.append({"rc": main(argv), "messages": list(messages)})
print(json.dumps({"results": results, "imported": [m for m in ("torch", "modeling_unica") if m in sys.modules]}))
"""
    report = json.loads(_python(code, json.dumps([argv for argv, _ in cases.values()])))
    assert report["imported"] == []  # no model could have been built or loaded
    for (case, (_, named)), result in zip(cases.items(), report["results"]):
        assert result["rc"] == 1, case
        assert len(result["messages"]) == 1 and "\n" not in result["messages"][0], (case, result["messages"])
        assert repr(named) in result["messages"][0], (case, result["messages"])
    for name in ("results-1", "results-2", "results-3", "emb.npy", "webqa", "ablation"):
        assert not (tmp_path / name).exists(), name
    assert not any(existing.iterdir())


def test_encode_checks_the_jsonl_images_before_loading_the_model(tiny_checkpoint, tmp_path, caplog, monkeypatch):
    import unica.checkpoint

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(unica.checkpoint, "load_checkpoint", no_load)
    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps({"text": "a red circle", "image": "gone.png"}) + "\n")
    assert cli(["encode", str(tiny_checkpoint), "--jsonl", str(records), "--out", str(tmp_path / "e.npy")]) == 1
    assert repr(str(tmp_path / "gone.png")) in caplog.text and not (tmp_path / "e.npy").exists()


# ---------------------------------------------------------------------- B5: init --vision-config
def test_init_takes_any_vision_config_override(tiny_text_path, tmp_path, caplog):
    out = tmp_path / "ckpt"
    assert cli(["init", str(out), "--text", tiny_text_path, "--vision", "vit-micro", "--fusion", "concat",
                "--vision-config", "num_hidden_layers=1", "--vision-config", "hidden_act=gelu_new",
                "--vision-config", "layer_norm_eps=1e-6", "--vision-config", "qkv_bias=false",
                "--image-size", "32", "--patch-size", "8"]) == 0
    vision = json.loads((out / "config.json").read_text())["vision_config"]
    assert (vision["num_hidden_layers"], vision["hidden_act"], vision["layer_norm_eps"], vision["qkv_bias"]) == \
        (1, "gelu_new", 1e-6, False)
    assert (vision["image_size"], vision["patch_size"], vision["hidden_size"]) == (32, 8, 128)  # preset's own size
    # A misspelt field is named with the close match; a pretrained tower takes none.
    assert cli(["init", str(tmp_path / "typo"), "--text", tiny_text_path, "--vision-config",
                "num_hiden_layers=1"]) == 1
    assert "num_hiden_layers (did you mean num_hidden_layers?)" in caplog.text
    assert cli(["init", str(tmp_path / "pretrained"), "--text", tiny_text_path, "--vision", tiny_text_path,
                "--vision-config", "num_hidden_layers=1"]) == 1
    assert "--vision-config applies to preset vision towers only" in caplog.text
    assert not (tmp_path / "typo").exists() and not (tmp_path / "pretrained").exists()


# ---------------------------------------------------------------------- B6: every --k cut-off reported
def test_evaluate_reports_every_requested_cutoff(tiny_checkpoint, tmp_path, caplog):
    import logging

    from dataset_builders.evaluation import build_evaluation_sets
    from eval.harness import report_metrics

    assert report_metrics([20, 1, 5]) == ["hit@1", "hit@5", "hit@20", "mrr@1", "recall@5"]
    eval_set = tmp_path / "eval"
    build_evaluation_sets(FIXTURE, eval_set, dataset="scenes", tasks=(2,))
    out = tmp_path / "results"
    with caplog.at_level(logging.INFO, logger="unica"):
        assert cli(["evaluate", str(tiny_checkpoint), "--dataset", str(eval_set), "--out", str(out), "--k", "1,3,20",
                    "--no-cache"]) == 0
    line = next(r.getMessage() for r in caplog.records if r.name == "unica" and r.getMessage().startswith("task2: "))
    written = json.loads((out / "results.json").read_text())["tasks"]["task2"]
    for metric in ("hit@1", "hit@3", "hit@20", "mrr@1"):
        assert f"{metric} {written[metric]:.4f}" in line, (metric, line)
    header = (out / "results.md").read_text().splitlines()[2]
    assert header.startswith("| task | hit@1 | hit@3 | hit@20 | mrr@1 |"), header
    assert 0 <= written["hit@1"] <= written["hit@3"] <= written["hit@20"] <= 1 and written["hit@20"] > 0
