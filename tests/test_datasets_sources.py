"""Tests for the offline sources: synthetic scenes (and their checked-in fixture) and OpenClipart."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from dataset_builders.mbeir import CANDIDATE_SCHEMA, QUERY_SCHEMA, read_jsonl_table
from dataset_builders.openclipart import build_openclipart, parse_svg_metadata, scan_openclipart, split_of
from dataset_builders.rows import TRAINING_FEATURES
from dataset_builders.scenes import COLOURS, POSITIONS, generate_scenes, load_scenes
from unica.apps.cli import main as unica_main

FIXTURES = Path(__file__).parent / "fixtures"
SCENES = FIXTURES / "scenes"
OPENCLIPART = FIXTURES / "openclipart"


def _digests(root: Path) -> dict[str, str]:
    """sha256 per file; PNGs by their pixels (compressed bytes may differ between zlib builds)."""
    digests = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix == ".png":
            with Image.open(path) as image:
                data = image.mode.encode() + repr(image.size).encode() + image.tobytes()
        else:
            data = path.read_bytes()
        digests[str(path.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return digests


def _scenes(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "scenes.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------ scenes


def test_fixture_is_what_the_generator_makes_and_is_small(tmp_path):
    """The checked-in fixture is exactly `generate_scenes(num_scenes=600, seed=0, image_size=64)`."""
    assert unica_main(["build-dataset", "scenes", "--out", str(tmp_path / "s"), "--num-scenes", "600", "--seed", "0"]) == 0
    assert _digests(tmp_path / "s") == _digests(SCENES)
    assert sum(p.stat().st_size for p in SCENES.rglob("*") if p.is_file()) <= 2 * 2**20


def test_other_seed_gives_other_scenes(tmp_path):
    generate_scenes(tmp_path / "a", num_scenes=40, seed=1, image_size=32, progress=False)
    generate_scenes(tmp_path / "b", num_scenes=40, seed=1, image_size=32, progress=False)
    generate_scenes(tmp_path / "c", num_scenes=40, seed=2, image_size=32, progress=False)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert _scenes(tmp_path / "a") != _scenes(tmp_path / "c")
    with Image.open(tmp_path / "a/mbeir_images/scenes_images/000000.png") as image:
        assert image.size == (32, 32)
    with pytest.raises(FileExistsError):
        generate_scenes(tmp_path / "a", num_scenes=40, seed=1, image_size=32, progress=False)


def test_captions_describe_the_pixels():
    """Each shape's colour is at its cell's centre, and the caption names every shape."""
    checked = 0
    for scene in _scenes(SCENES)[:80]:
        with Image.open(SCENES / f"mbeir_images/scenes_images/{scene['index']:06d}.png") as image:
            pixels = image.convert("RGB")
            side = image.size[0]
        for shape in scene["shapes"]:
            row, column = divmod(POSITIONS.index(shape["position"]), 3)
            centre = (int((column + 0.5) * side / 3), int((row + 0.5) * side / 3))
            assert pixels.getpixel(centre) == COLOURS[shape["colour"]], (scene["index"], shape)
            assert f"{shape['size']} {shape['colour']} {shape['kind']}" in scene["caption"]
            checked += 1
        assert str(scene["year"]) not in scene["caption"] and scene["place"] in scene["snippet"]
    assert checked > 150


def test_hybrid_queries_need_both_text_and_image():
    """Task 2: the text facts alone and the visible shape alone each match several test documents."""
    scenes = {s["index"]: s for s in _scenes(SCENES) if s["split"] == "test"}
    queries = read_jsonl_table(SCENES / "query/test/mbeir_scenes_task2_test.jsonl", QUERY_SCHEMA)
    texts = queries.column("query_txt").to_pylist()
    text_ambiguous = image_ambiguous = 0
    for text in texts:
        shape_phrase, facts = text.split(", a ", 1)
        medium_place, year = facts.rsplit(", ", 1)
        place = medium_place.split(" from ")[1]
        same_facts = [s for s in scenes.values() if s["place"] == place and str(s["year"]) == year.rstrip(".")]
        shape_words = " ".join(shape_phrase.lower().split()[:3])  # "small red circle"
        same_shape = [s for s in scenes.values() if shape_words in s["caption"].lower()]
        both = [s for s in same_facts if s in same_shape]
        assert len(both) >= 1
        text_ambiguous += len(same_facts) >= 2
        image_ambiguous += len(same_shape) >= 2
    assert len(texts) == 75
    assert image_ambiguous / len(texts) > 0.9  # the shape alone almost never identifies the scene
    assert text_ambiguous / len(texts) > 0.05


def test_load_scenes_training_rows():
    ds = load_scenes(SCENES, split="train")
    metadata = json.loads((SCENES / "metadata.json").read_text())
    assert ds.features == TRAINING_FEATURES
    assert Counter(ds["task_id"]) == {int(k): v for k, v in metadata["queries"]["train"].items()}
    row = ds[0]
    assert row["task_id"] == 0 and row["query_image"] is None and row["pos_text"] == ""
    assert row["pos_image"].size == (64, 64) and row["neg_image"].size == (64, 64)
    assert all(n for n in ds["neg_did"])  # every scene query has a hard negative
    test = load_scenes(SCENES, split="test")
    assert len(test) == sum(metadata["queries"]["test"].values()) == 345
    assert not set(test["pos_did"]) & set(ds["pos_did"])  # no candidate in both splits


# ------------------------------------------------------------------------------------------ OpenClipart


def test_svg_metadata_from_the_fixture():
    items = scan_openclipart(OPENCLIPART, progress=False)
    assert len(items) == 44 and len({i.category for i in items}) == 22
    assert all(i.title for i in items)
    assert sum(bool(i.description) for i in items) >= 30 and sum(bool(i.keywords) for i in items) == 44
    frog = next(i for i in items if i.path == "animals/2_dead_frogs_lumen_desig_01")
    assert frog.title and "frog" in frog.keywords
    # Agents' titles (publisher "Open Clip Art Library") are not the work's title.
    assert parse_svg_metadata(
        "<cc:Work><dc:publisher><cc:Agent><dc:title>Open Clip Art Library</dc:title></cc:Agent></dc:publisher>"
        "<dc:description>A &amp; B</dc:description></cc:Work>"
    ) == ("", "A & B", [])


def test_openclipart_build_split_by_image(tmp_path):
    counts = build_openclipart(tmp_path / "oc", root=OPENCLIPART, image_size=48, progress=False)
    assert counts["images"] == 44
    assert counts["queries"] == {"train": {"0": 31, "2": 31, "3": 31}, "test": {"0": 13, "2": 13, "3": 13}}
    pools = {
        split: read_jsonl_table(tmp_path / f"oc/cand_pool/global/mbeir_union_{split}_cand_pool.jsonl", CANDIDATE_SCHEMA)
        for split in ("train", "test")
    }
    images = {split: set(filter(None, pools[split].column("img_path").to_pylist())) for split in pools}
    assert len(images["train"]) == 31 and len(images["test"]) == 13 and not images["train"] & images["test"]
    assert split_of("animals/bugs/bee", 0.2) == split_of("animals/bugs/bee", 0.2)
    with Image.open(tmp_path / "oc" / sorted(images["test"])[0]) as image:
        assert max(image.size) == 48 and image.mode == "RGB"
    rows = load_scenes(tmp_path / "oc", split="train")  # the generic loader works on any generated root
    assert Counter(rows["task_id"]) == {0: 31, 2: 31, 3: 31}


def test_openclipart_missing_packages_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install openclipart-svg openclipart-png"):
        build_openclipart(tmp_path / "oc", root=tmp_path / "nothing", progress=False)
    assert unica_main(["build-dataset", "openclipart", "--root", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 1
    assert not (tmp_path / "oc").exists() and not (tmp_path / "o").exists()
