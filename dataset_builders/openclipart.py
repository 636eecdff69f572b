"""OpenClipart: real public-domain clip art with real human titles, descriptions and keywords, offline.

Debian's ``openclipart-svg`` and ``openclipart-png`` packages install about 8,100 images in 22
categories under ``/usr/share/openclipart/{svg,png}/<category>/...``. Each SVG carries Dublin Core
metadata: ``dc:title``, ``dc:description`` and keywords (``dc:subject`` / ``rdf:li``). This builder
pairs each SVG's metadata with its PNG rendering and emits an M-BEIR root (dataset id 11) with a
deterministic train / test split by image (a hash of the file's path, so no image is in both):

====  =====================  =======================================================
task  modalities             query -> positive (hard negative: same category)
====  =====================  =======================================================
0     text -> image          the description (else the title) -> the image
2     text -> image,text     the keywords -> the image with its title (hybrid)
3     image -> text          the image -> its title
====  =====================  =======================================================

Example::

    build_openclipart("./openclipart")                    # root: /usr/share/openclipart
    ds = load_training_rows("./openclipart", split="train")

Install the packages with ``apt-get install openclipart-svg openclipart-png``.
"""

from __future__ import annotations

import hashlib
import html
import logging
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from .atomic import atomic_directory
from .mbeir import DATASET_IDS, write_mbeir_source

logger = logging.getLogger(__name__)

OPENCLIPART_ID = DATASET_IDS["OpenClipart"]
DEFAULT_ROOT = Path("/usr/share/openclipart")
INSTALL_HINT = "install the Debian packages with `apt-get install openclipart-svg openclipart-png`, or pass --root"

_WORK = re.compile(r"<cc:Work\b.*?</cc:Work>", re.S)
_AGENT = re.compile(r"<cc:Agent\b.*?</cc:Agent>", re.S)
_TITLE = re.compile(r"<dc:title>(.*?)</dc:title>", re.S)
_DESCRIPTION = re.compile(r"<dc:description>(.*?)</dc:description>", re.S)
_SUBJECT = re.compile(r"<dc:subject>(.*?)</dc:subject>", re.S)
_ITEM = re.compile(r"<rdf:li>(.*?)</rdf:li>", re.S)


@dataclass
class ClipArt:
    """One image and its metadata; ``path`` is relative to the package root's ``svg/`` folder, without suffix."""

    path: str
    category: str
    title: str
    description: str
    keywords: list[str]


def _clean(text: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", text)).split())


def parse_svg_metadata(svg_text: str) -> tuple[str, str, list[str]]:
    """(title, description, keywords) of an SVG's ``cc:Work`` metadata; empty when absent.

    Agents (publisher, creator) also have ``dc:title``s; they are removed first.

    >>> parse_svg_metadata('<cc:Work><dc:title>Bee</dc:title><dc:subject><rdf:Bag><rdf:li>insect</rdf:li></rdf:Bag></dc:subject></cc:Work>')
    ('Bee', '', ['insect'])
    """
    work = _WORK.search(svg_text)
    if not work:
        return "", "", []
    block = _AGENT.sub("", work.group(0))
    title = _TITLE.search(block)
    description = _DESCRIPTION.search(block)
    subject = _SUBJECT.search(block)
    keywords = [_clean(k) for k in _ITEM.findall(subject.group(1))] if subject else []
    keywords = list(dict.fromkeys(k for k in keywords if k))
    return _clean(title.group(1)) if title else "", _clean(description.group(1)) if description else "", keywords


def scan_openclipart(root: str | Path = DEFAULT_ROOT, progress: bool = True) -> list[ClipArt]:
    """Every SVG under ``root/svg`` that has a PNG under ``root/png`` and a title or description."""
    root = Path(root)
    svg_root, png_root = root / "svg", root / "png"
    if not svg_root.is_dir() or not png_root.is_dir():
        raise FileNotFoundError(f"OpenClipart not found: {svg_root} and {png_root} must exist; {INSTALL_HINT}")
    items, without_png, without_text = [], 0, 0
    for svg in tqdm(sorted(svg_root.rglob("*.svg")), desc="reading SVG metadata", disable=not progress):
        relative = svg.relative_to(svg_root).with_suffix("")
        if not (png_root / relative.with_suffix(".png")).is_file():
            without_png += 1
            continue
        title, description, keywords = parse_svg_metadata(svg.read_text(encoding="utf-8", errors="replace"))
        if not title and not description:
            without_text += 1
            continue
        items.append(ClipArt(relative.as_posix(), relative.parts[0], title, description, keywords))
    if not items:
        raise FileNotFoundError(f"no SVG with a PNG and a title under {root}; {INSTALL_HINT}")
    logger.info("%d images (%d without PNG, %d without title or description)", len(items), without_png, without_text)
    return items


def split_of(path: str, test_fraction: float) -> str:
    """Deterministic split by image: a hash of its path (stable when other images come and go)."""
    bucket = int(hashlib.sha1(path.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if bucket < test_fraction else "train"


def _save_png(source: Path, target: Path, image_size: int, max_pixels: int) -> bool:
    """Shrink a package PNG onto white; ``False`` (nothing written) for images over ``max_pixels``.

    A few package PNGs are huge (up to ~600 megapixels, gigabytes once decoded); they are skipped
    rather than raising Pillow's process-wide decompression-bomb limit.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below
        try:
            image = Image.open(source)
        except Image.DecompressionBombError:
            return False
    with image:
        if image.size[0] * image.size[1] > max_pixels:
            return False
        image.thumbnail((image_size, image_size))  # shrink first, then convert the small copy
        rgba = image.convert("RGBA")
    canvas = Image.new("RGB", rgba.size, (255, 255, 255))
    canvas.paste(rgba, mask=rgba.getchannel("A"))  # transparent clip art on white
    target.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(target, optimize=True)
    return True


def build_openclipart(
    out_dir: str | Path,
    root: str | Path = DEFAULT_ROOT,
    image_size: int = 128,
    test_fraction: float = 0.2,
    seed: int = 0,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    max_pixels: int = 40_000_000,
) -> dict:
    """Build the OpenClipart M-BEIR root in ``out_dir`` from the package root; returns counts.

    ``limit`` keeps the first N images (sorted by path), for quick runs. ``seed`` picks hard negatives.
    PNGs over ``max_pixels`` are skipped (counted in the result as ``skipped_oversized``).
    """
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    items = scan_openclipart(root, progress=progress)
    if limit is not None:
        items = items[:limit]
    rng = random.Random(seed)
    with atomic_directory(out_dir, overwrite=overwrite) as out:
        candidates: dict[str, list[dict]] = {"train": [], "test": []}
        queries: dict[str, list[dict]] = {"train": [], "test": []}
        text_dids: dict[tuple[str, str], str] = {}
        counter = {"did": 1, "qid": 1}

        def add_candidate(split: str, txt: str | None, img_path: str | None, modality: str) -> str:
            if modality == "text" and (split, txt) in text_dids:  # one candidate per distinct title
                return text_dids[(split, txt)]
            did = f"{OPENCLIPART_ID}:{counter['did']}"
            counter["did"] += 1
            candidates[split].append({"did": did, "txt": txt, "img_path": img_path, "modality": modality})
            if modality == "text":
                text_dids[(split, txt)] = did
            return did

        records, oversized = [], []
        for item in tqdm(items, desc="converting images", disable=not progress):
            split = split_of(item.path, test_fraction)
            relative = f"mbeir_images/openclipart_images/{item.path}.png"
            if not _save_png(Path(root) / "png" / f"{item.path}.png", out / relative, image_size, max_pixels):
                oversized.append(item.path)
                continue
            title = item.title or item.description
            dids = {
                "image": add_candidate(split, None, relative, "image"),
                "hybrid": add_candidate(split, title, relative, "image,text"),
                "title": add_candidate(split, title, None, "text"),
            }
            records.append((item, split, relative, dids))
        by_group: dict[tuple[str, str], list] = {}
        for record in records:
            by_group.setdefault((record[1], record[0].category), []).append(record)
        for item, split, relative, dids in records:
            group = [r for r in by_group[(split, item.category)] if r[0].path != item.path]
            if not group:
                group = [r for r in records if r[1] == split and r[0].path != item.path]
            negative = rng.choice(group)[3] if group else None
            tasks = [(0, "text", item.description or item.title, None, "image")]
            if item.keywords:
                tasks.append((2, "text", ", ".join(item.keywords), None, "hybrid"))
            tasks.append((3, "image", None, relative, "title"))
            for task, modality, txt, img_path, kind in tasks:
                negatives = [negative[kind]] if negative and negative[kind] != dids[kind] else []
                queries[split].append({
                    "qid": f"{OPENCLIPART_ID}:{counter['qid']}",
                    "query_txt": txt,
                    "query_img_path": img_path,
                    "query_modality": modality,
                    "pos_cand_list": [dids[kind]],
                    "neg_cand_list": negatives,
                    "task_id": task,
                })
                counter["qid"] += 1
        counts = write_mbeir_source(out, "openclipart", queries, candidates)
        counts["images"] = len(records)
        counts["skipped_oversized"] = len(oversized)
    if oversized:
        logger.warning("skipped %d PNGs over %d pixels, e.g. %s", len(oversized), max_pixels, oversized[:3])
    logger.info("OpenClipart: %d images -> %s", len(records), counts["queries"])
    return counts


def write_fixture(
    out_dir: str | Path, root: str | Path = DEFAULT_ROOT, per_category: int = 2, image_size: int = 64, overwrite: bool = False
) -> int:
    """A small copy of the packages' layout for tests: a few images per category, SVGs cut to their metadata.

    Prefers images with a description and keywords; returns how many images were copied.
    """
    items = scan_openclipart(root, progress=False)
    by_category: dict[str, list[ClipArt]] = {}
    for item in items:
        by_category.setdefault(item.category, []).append(item)
    chosen = []
    for category in sorted(by_category):
        ranked = sorted(by_category[category], key=lambda i: (not i.description, not i.keywords, i.path))
        chosen += ranked[:per_category]
    with atomic_directory(out_dir, overwrite=overwrite) as out:
        for item in chosen:
            svg_text = (Path(root) / "svg" / f"{item.path}.svg").read_text(encoding="utf-8", errors="replace")
            work = _WORK.search(svg_text)
            target = out / "svg" / f"{item.path}.svg"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(
                '<svg xmlns="http://www.w3.org/2000/svg" xmlns:cc="http://web.resource.org/cc/" '
                'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
                f"<metadata><rdf:RDF>{work.group(0)}</rdf:RDF></metadata></svg>\n",
                encoding="utf-8",
            )
            _save_png(Path(root) / "png" / f"{item.path}.png", out / "png" / f"{item.path}.png", image_size, 40_000_000)
    return len(chosen)
