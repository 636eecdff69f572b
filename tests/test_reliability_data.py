"""Reliability of dataset builds: data never comes from outside the named root, image bytes are always
stored, bad images and qrels are refused at build time naming the record, exports killed midway never
look complete, and Hub uploads fail with one line when the Hub cannot be reached."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dataset_builders.evaluation import build_evaluation_sets
from dataset_builders.export import validate_export
from dataset_builders.umr import build_umr_s10
from unica.apps.cli import main as unica_main
from unica.apps.hub import push_dataset

FIXTURES = Path(__file__).parent / "fixtures"
SCENE_PNG = FIXTURES / "scenes/mbeir_images/scenes_images/000000.png"


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _image_root(tmp_path: Path, image_paths: list[str], qrels: list[str] | None = None) -> Path:
    """An M-BEIR root with one text -> image task (task 0) whose candidates use ``image_paths``.

    Train and test files both exist, so the same root serves ``umr-s10`` and ``mbeir-eval``. Images named
    ``mbeir_images/<n>.png`` are real PNGs inside the root.
    """
    root = tmp_path / "root"
    (root / "mbeir_images").mkdir(parents=True)
    pool, queries = [], []
    for number, image_path in enumerate(image_paths, start=1):
        pool.append({"did": f"2:{number}", "txt": None, "img_path": image_path, "modality": "image"})
        queries.append({"qid": f"2:{number}", "query_txt": f"query {number}", "query_img_path": None,
                        "query_modality": "text", "pos_cand_list": [f"2:{number}"], "neg_cand_list": [],
                        "task_id": 0})
    for number in range(1, 4):
        shutil.copy(SCENE_PNG, root / f"mbeir_images/{number}.png")
    _write_jsonl(root / "query/train/mbeir_webqa_train.jsonl", queries)
    _write_jsonl(root / "cand_pool/global/mbeir_union_train_cand_pool.jsonl", pool)
    _write_jsonl(root / "query/test/mbeir_webqa_task0_test.jsonl", queries)
    _write_jsonl(root / "cand_pool/local/mbeir_webqa_task0_cand_pool.jsonl", pool)
    if qrels is not None:
        (root / "qrels/test").mkdir(parents=True)
        (root / "qrels/test/mbeir_webqa_task0_test_qrels.txt").write_text("".join(line + "\n" for line in qrels))
    return root


def _builds(root: Path, out: Path):
    """Both builders that read M-BEIR image paths, as (name, callable)."""
    return [
        ("umr-s10", lambda: build_umr_s10(root, out, fraction=1.0, min_per_stratum=0)),
        ("mbeir-eval", lambda: build_evaluation_sets(root, out, dataset="webqa", tasks=(0,))),
    ]


# ------------------------------------------------------------------------------------------ path traversal


@pytest.mark.parametrize("kind", ["relative", "absolute", "symlink"])
def test_image_paths_outside_the_root_are_refused(tmp_path, kind):
    secret = tmp_path / "secret.png"  # a real image outside the root: the build must not embed it
    shutil.copy(SCENE_PNG, secret)
    escape = {"relative": "../secret.png", "absolute": str(secret), "symlink": "mbeir_images/link.png"}[kind]
    root = _image_root(tmp_path, ["mbeir_images/1.png", escape])
    if kind == "symlink":
        (root / "mbeir_images/link.png").symlink_to(secret)
    out = tmp_path / "out"
    for name, build in _builds(root, out):
        with pytest.raises(ValueError, match=r"candidate '2:2'.*outside the dataset root") as error:
            build()
        assert escape in str(error.value) or kind == "symlink", name
        assert not out.exists(), name
    # The CLI says it in one line, and push-dataset has nothing to list.
    args = ["build-dataset", "mbeir-eval", "--mbeir-root", str(root), "--dataset", "webqa", "--tasks", "0",
            "--out", str(out)]
    assert unica_main(args) == 1 and not out.exists()


def test_query_image_path_outside_the_root_is_refused(tmp_path):
    root = _image_root(tmp_path, ["mbeir_images/1.png"])
    query = {"qid": "2:9", "query_txt": "q", "query_img_path": "mbeir_images/../../x.png",
             "query_modality": "image,text", "pos_cand_list": ["2:1"], "neg_cand_list": [], "task_id": 7}
    _write_jsonl(root / "query/train/mbeir_webqa_train.jsonl", [query])
    with pytest.raises(ValueError, match=r"query '2:9'.*'mbeir_images/\.\./\.\./x\.png'.*outside the dataset root"):
        build_umr_s10(root, tmp_path / "out", fraction=1.0, min_per_stratum=0)


def test_dotdot_that_stays_inside_the_root_is_fine(tmp_path):
    root = _image_root(tmp_path, ["mbeir_images/../mbeir_images/1.png"])
    build_evaluation_sets(root, tmp_path / "out", dataset="webqa", tasks=(0,))
    corpus = datasets.load_dataset(str(tmp_path / "out"), "task0_corpus", split="test", cache_dir=str(tmp_path / "c"))
    assert corpus[0]["image"].size == (64, 64)


# ------------------------------------------------------------------------------------------ bytes always stored


def _image_cells(folder: Path, config: str, column: str) -> list[dict]:
    files = sorted((folder / "data" / config).glob("*.parquet"))
    return [cell for f in files for cell in pq.read_table(f).column(column).to_pylist()]


def test_build_from_inside_the_images_folder_keeps_every_image_byte(tmp_path, monkeypatch):
    root = _image_root(tmp_path, ["mbeir_images/1.png", "mbeir_images/2.png", "mbeir_images/3.png"])
    monkeypatch.chdir(root / "mbeir_images")  # files named 1.png ... exist in the working folder
    assert unica_main(["build-dataset", "mbeir-eval", "--mbeir-root", str(root), "--dataset", "webqa",
                       "--tasks", "0", "--out", str(tmp_path / "eval")]) == 0
    cells = _image_cells(tmp_path / "eval", "task0_corpus", "image")
    assert len(cells) == 3
    assert all(cell["bytes"] == SCENE_PNG.read_bytes() for cell in cells)
    build_umr_s10(root, tmp_path / "umr", fraction=1.0, min_per_stratum=0)
    cells = _image_cells(tmp_path / "umr", "default", "pos_image") + _image_cells(tmp_path / "umr", "candidates", "image")
    assert len(cells) == 6 and all(cell["bytes"] == SCENE_PNG.read_bytes() for cell in cells)


# ------------------------------------------------------------------------------------------ bad images


def _bomb_png(path: Path) -> None:
    # 12000 x 8000 = 96M pixels, over PIL's default limit; mode "1" keeps the file a few KB.
    Image.new("1", (12000, 8000)).save(path)


@pytest.mark.parametrize("bad", ["not-an-image", "truncated", "bomb"])
def test_bad_images_are_refused_at_build_naming_the_record(tmp_path, bad):
    root = _image_root(tmp_path, ["mbeir_images/1.png", "mbeir_images/bad.png"])
    target = root / "mbeir_images/bad.png"
    if bad == "not-an-image":
        target.write_text("hello, I am text")
    elif bad == "truncated":
        target.write_bytes(SCENE_PNG.read_bytes()[: SCENE_PNG.stat().st_size // 2])
    else:
        _bomb_png(target)
    out = tmp_path / "out"
    for name, build in _builds(root, out):
        with pytest.raises(ValueError, match=r"candidate '2:2'.*'mbeir_images/bad\.png'"):
            build()
        assert not out.exists(), name
    # --skip-missing drops records with unreadable images as it drops missing ones, and says so.
    sample = build_umr_s10(root, out, fraction=1.0, min_per_stratum=0, skip_missing=True)
    assert [q["qid"] for q in sample.queries] == ["2:1"]
    assert sample.missing.dropped_candidates == 1


# ------------------------------------------------------------------------------------------ qrels


def test_qrels_naming_an_unknown_query_are_refused(tmp_path):
    root = _image_root(tmp_path, ["mbeir_images/1.png"], qrels=["2:1 0 2:1 1 0", "2:77 0 2:1 1 0"])
    with pytest.raises(ValueError, match=r"1 qrels name query ids not in .*mbeir_webqa_task0_test\.jsonl.*'2:77'"):
        build_evaluation_sets(root, tmp_path / "out", dataset="webqa", tasks=(0,))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ killed exports


def test_export_killed_at_random_points_never_leaves_a_complete_looking_folder(tmp_path):
    """SIGKILL a build at several moments: the output folder is absent or complete, never half."""
    root = _image_root(tmp_path, [f"mbeir_images/{1 + n % 3}.png" for n in range(300)])
    script = textwrap.dedent(f"""
        from dataset_builders.evaluation import build_evaluation_sets
        build_evaluation_sets({str(root)!r}, {str(tmp_path / 'out')!r}, dataset="webqa", tasks=(0,))
    """)
    outcomes = set()
    for delay in (0.3, 0.8, 1.3, 1.8, 2.5):
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        process = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.getcwd()})
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        out = tmp_path / "out"
        if out.exists():
            validate_export(out)  # complete: card, every config's files present
            corpus = datasets.load_dataset(str(out), "task0_corpus", split="test", cache_dir=str(tmp_path / "c"))
            assert len(corpus) == 300
            outcomes.add("complete")
        else:
            outcomes.add("absent")
        # A staging folder left by the killed process is never taken for an export.
        for partial in tmp_path.glob(".out.partial-*"):
            with pytest.raises(ValueError, match="unfinished export"):
                validate_export(partial)
    assert "absent" in outcomes  # the kills did land mid-build at least once


# ------------------------------------------------------------------------------------------ Hub unreachable


def test_push_dataset_offline_is_one_clear_line(tmp_path, monkeypatch, caplog):
    root = _image_root(tmp_path, ["mbeir_images/1.png"])
    build_evaluation_sets(root, tmp_path / "eval", dataset="webqa", tasks=(0,))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match=r"HF_HUB_OFFLINE.*--dry-run"):
        push_dataset(tmp_path / "eval", "my-org/set")
    assert unica_main(["push-dataset", str(tmp_path / "eval"), "--repo-id", "my-org/set"]) == 1
    assert "HF_HUB_OFFLINE" in caplog.text and "Traceback" not in caplog.text


# ------------------------------------------------------------------------------------------ reader edge cases (found by fuzzing)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'null\n{"did": "2:1"}\n', r"jsonl:1: expected a JSON object per line, got 'null'"),  # segfaulted pyarrow
        (b'{"did": "2:1"}\nnull\n', r"jsonl:2: expected a JSON object per line, got 'null'"),  # was a row of nulls
        (b'{"did": "2:1"}\n  7\n', r"jsonl:2: expected a JSON object per line, got '7'"),
        (b'{"did": "2:1"}\n{"did": "2:\xff"}\n', r"jsonl:2: not UTF-8 text"),
    ],
    ids=["null-first", "null-later", "number", "bad-utf8"],
)
def test_jsonl_lines_that_are_not_objects_name_file_and_line(tmp_path, content, message):
    from dataset_builders.mbeir import CANDIDATE_SCHEMA, iter_jsonl_batches, read_jsonl_table

    path = tmp_path / "pool.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_jsonl_table(path, CANDIDATE_SCHEMA)
    with pytest.raises(ValueError, match=message):
        list(iter_jsonl_batches(path, CANDIDATE_SCHEMA))


def test_blank_and_indented_lines_are_still_read(tmp_path):
    from dataset_builders.mbeir import CANDIDATE_SCHEMA, read_jsonl_table

    path = tmp_path / "pool.jsonl"
    path.write_bytes(b'  {"did": "2:1"}\n\n\t\n{"did": "2:2"}\r\n')
    assert read_jsonl_table(path, CANDIDATE_SCHEMA).column("did").to_pylist() == ["2:1", "2:2"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("2:1 0 2:1 ² 0", "expected 'qid 0 did relevance task_id'"),
        ("2:1 0 2:1 --5 0", "expected 'qid 0 did relevance task_id'"),
        ("2:1 0 2:1 1 ³", "expected 'qid 0 did relevance task_id'"),
    ],
)
def test_qrels_numbers_must_be_ascii_integers(tmp_path, line, message):
    from dataset_builders.mbeir import read_qrels

    path = tmp_path / "qrels.txt"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"qrels\.txt:1: {message}"):
        read_qrels(path)
    path.write_bytes(b"2:1 0 2:1 1 0\n2:\xff 0 2:1 1 0\n")
    with pytest.raises(ValueError, match=r"qrels\.txt:2: not UTF-8 text"):
        read_qrels(path)


def test_source_name_of_a_non_ascii_digit_prefix():
    from dataset_builders.mbeir import source_name

    assert source_name("²:1") == "²" and source_name("2:15") == "WebQA" and source_name("42:1") == "dataset42"


@pytest.mark.parametrize("blank", [None, "", "   "])
def test_records_with_neither_text_nor_image_are_refused_at_build(tmp_path, blank):
    root = _image_root(tmp_path, ["mbeir_images/1.png"])
    pool = [{"did": "2:1", "txt": None, "img_path": "mbeir_images/1.png", "modality": "image"},
            {"did": "2:2", "txt": blank, "img_path": None, "modality": "text"}]
    _write_jsonl(root / "cand_pool/local/mbeir_webqa_task0_cand_pool.jsonl", pool)
    with pytest.raises(ValueError, match=r"candidate '2:2' has neither text nor image"):
        build_evaluation_sets(root, tmp_path / "out", dataset="webqa", tasks=(0,))
    query = {"qid": "2:1", "query_txt": blank, "query_img_path": None, "query_modality": "text",
             "pos_cand_list": ["2:1"], "neg_cand_list": [], "task_id": 0}
    _write_jsonl(root / "query/train/mbeir_webqa_train.jsonl", [query])
    with pytest.raises(ValueError, match=r"query '2:1' has neither text nor image"):
        build_umr_s10(root, tmp_path / "out", fraction=1.0, min_per_stratum=0)
    assert not (tmp_path / "out").exists()


def test_harness_rows_treat_whitespace_text_as_no_text():
    from eval.harness import row_item

    image = Image.new("RGB", (8, 8))
    assert row_item("  \n", image) is image and row_item(" a ", None) == " a "
    with pytest.raises(ValueError, match="neither text nor image"):
        row_item("   ", None)


def test_a_write_killed_between_its_renames_gets_the_old_folder_back(tmp_path):
    """``atomic_directory`` moves the old folder aside, then renames the new one in: a kill between the two
    leaves no folder at all. The next write of that folder puts the old one back before anything else."""
    from dataset_builders.atomic import atomic_directory

    aside = tmp_path / ".out.old-killed" / "out"  # what a writer killed between the renames leaves
    aside.mkdir(parents=True)
    (aside / "README.md").write_text("the old export")
    (tmp_path / ".out.partial-killed").mkdir()  # and the staging folder it was renaming in
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "out", overwrite=True):
        raise RuntimeError("this write fails too")
    assert (tmp_path / "out/README.md").read_text() == "the old export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(FileExistsError, match="--overwrite"), atomic_directory(tmp_path / "out"):
        pass
    with atomic_directory(tmp_path / "out", overwrite=True) as staging:
        (staging / "README.md").write_text("the new export")
    assert (tmp_path / "out/README.md").read_text() == "the new export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
