"""Synthetic scenes: offline, deterministic multimodal retrieval data in M-BEIR format (made with PIL).

A scene is an image of 1-4 shapes, each with a kind (circle, square, triangle, diamond, cross), a
colour, a size (small / large) and a position (a cell of a 3x3 grid), plus a text *snippet* with
facts not visible in the image: a title, a year, a place and a medium. From them come four M-BEIR tasks:

====  =====================  ===========================================================================
task  modalities             query -> positive (hard negative)
====  =====================  ===========================================================================
0     text -> image          caption of the shapes -> the scene image (a scene sharing a shape)
2     text -> image,text     one visible shape + place + year -> image and snippet (same place, other shapes)
7     image,text -> image    scene image + an edit ("make the red circle blue") -> edited image (the original)
3     image -> text          scene image -> its caption (the caption of a scene sharing a shape)
====  =====================  ===========================================================================

Task 2 needs both sides: several scenes share a place and year (text alone is ambiguous) and many
share a shape (the image alone is ambiguous). Not every scene has every task (shares differ, which
makes the stratified sampler's job non-trivial).

Output (an M-BEIR root, so the M-BEIR reader, UMR-S10 builder and evaluation builder run on it)::

    mbeir_images/scenes_images/000012.png (+ 000012_edit.png)
    query/train/mbeir_scenes_train.jsonl            query/test/mbeir_scenes_task{0,2,3,7}_test.jsonl
    cand_pool/global/mbeir_union_{train,test}_cand_pool.jsonl
    cand_pool/local/mbeir_scenes_task{0,2,3,7}_cand_pool.jsonl     (test candidates of that task's modality)
    qrels/{train,test}/...                          scenes.jsonl (each scene's shapes and facts)

Example::

    from dataset_builders.scenes import generate_scenes, load_scenes
    generate_scenes("./scenes", num_scenes=3000, seed=0, image_size=64)
    train = load_scenes("./scenes", split="train")   # datasets.Dataset, rows.TRAINING_FEATURES
    train[0]["query_text"], train[0]["pos_image"]      # "A small red circle at the top left ...", PIL image
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from .atomic import atomic_directory
from .mbeir import DATASET_IDS, write_mbeir_source

logger = logging.getLogger(__name__)

SCENES_ID = DATASET_IDS["Scenes"]
KINDS = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = {
    "red": (215, 38, 38),
    "green": (34, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 180),
    "orange": (245, 130, 20),
    "black": (25, 25, 25),
}
SIZES = {"small": 0.09, "large": 0.16}  # radius as a fraction of the image side
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
BACKGROUNDS = ((250, 250, 250), (238, 242, 248), (248, 242, 232), (236, 246, 236))
PLACES = (
    "Lisbon", "Oslo", "Kyoto", "Lagos", "Lima", "Cairo", "Hanoi", "Quebec",
    "Tbilisi", "Dakar", "Perth", "Bergen",
)
MEDIA = ("poster", "print", "tile", "banner", "card", "mural")
TITLE_WORDS = (
    ("Quiet", "Bright", "Hidden", "Northern", "Silent", "Golden", "Broken", "Distant", "Early", "Gentle",
     "Restless", "Hollow", "Scarlet", "Winter", "Patient", "Secret"),
    ("Harbour", "Garden", "Signal", "Orchard", "Bridge", "Lantern", "Market", "Meadow", "Station", "Tower",
     "River", "Window", "Festival", "Archive", "Compass", "Voyage"),
)
TASKS = (0, 2, 7, 3)
# Probability that a scene gets a query of each task: unequal on purpose (see module docstring).
TASK_PROBABILITY = {0: 1.0, 3: 0.8, 2: 0.6, 7: 0.4}


def check_task_probability(task_probability: Mapping[int, float] | None) -> dict[int, float]:
    """``TASK_PROBABILITY`` updated by ``task_probability`` (keys: task ids as ints or strings, values in [0, 1])."""
    probability = dict(TASK_PROBABILITY)
    for key, value in (task_probability or {}).items():
        try:
            task = int(key)
        except (TypeError, ValueError):
            task = None
        if task not in TASK_PROBABILITY:
            raise ValueError(f"task_probability has task {key!r}; scenes tasks are {sorted(TASK_PROBABILITY)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"task_probability[{key!r}] must be a number in [0, 1], got {value!r}")
        probability[task] = float(value)
    if not any(probability.values()):
        raise ValueError("task_probability turns every task off; give at least one task a probability > 0")
    return probability


@dataclass
class Shape:
    kind: str
    colour: str
    size: str
    position: str

    def phrase(self) -> str:
        """``"a small red circle at the top left"``."""
        where = {"left": "on the left", "right": "on the right", "center": "in the center"}.get(
            self.position, f"at the {self.position}"
        )
        return f"a {self.size} {self.colour} {self.kind} {where}"


@dataclass
class Scene:
    index: int
    shapes: list[Shape]
    background: tuple[int, int, int]
    title: str
    year: int
    place: str
    medium: str
    split: str

    def caption(self) -> str:
        phrases = [shape.phrase() for shape in self.shapes]
        text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        return text[0].upper() + text[1:] + "."

    def snippet(self) -> str:
        return f'"{self.title}" ({self.year}), a {self.medium} from {self.place}.'


def draw_scene(shapes: list[Shape], background: tuple[int, int, int], image_size: int) -> Image.Image:
    """Render shapes on a plain background (no anti-aliasing: small, deterministic PNGs)."""
    image = Image.new("RGB", (image_size, image_size), background)
    draw = ImageDraw.Draw(image)
    cell = image_size / 3
    for shape in shapes:
        row, column = divmod(POSITIONS.index(shape.position), 3)
        cx, cy = (column + 0.5) * cell, (row + 0.5) * cell
        r = SIZES[shape.size] * image_size
        colour = COLOURS[shape.colour]
        box = (cx - r, cy - r, cx + r, cy + r)
        if shape.kind == "circle":
            draw.ellipse(box, fill=colour)
        elif shape.kind == "square":
            draw.rectangle((cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r), fill=colour)
        elif shape.kind == "triangle":
            draw.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=colour)
        elif shape.kind == "diamond":
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
        elif shape.kind == "cross":
            w = 0.35 * r
            draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
            draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
    return image


def _random_shape(rng: random.Random, position: str) -> Shape:
    return Shape(rng.choice(KINDS), rng.choice(list(COLOURS)), rng.choice(list(SIZES)), position)


def _random_scenes(num_scenes: int, rng: random.Random, test_fraction: float) -> list[Scene]:
    scenes = []
    num_test = int(round(num_scenes * test_fraction))
    test_indices = set(rng.sample(range(num_scenes), num_test))
    for index in range(num_scenes):
        positions = rng.sample(POSITIONS, rng.randint(1, 4))
        scenes.append(
            Scene(
                index=index,
                shapes=[_random_shape(rng, p) for p in positions],
                background=rng.choice(BACKGROUNDS),
                title=f"{rng.choice(TITLE_WORDS[0])} {rng.choice(TITLE_WORDS[1])}",
                year=rng.randint(1990, 2019),
                place=rng.choice(PLACES),
                medium=rng.choice(MEDIA),
                split="test" if index in test_indices else "train",
            )
        )
    return scenes


def _edit(scene: Scene, rng: random.Random) -> tuple[list[Shape], str]:
    """A modified copy of the scene's shapes and the instruction that describes the change."""
    shapes = [Shape(**asdict(s)) for s in scene.shapes]
    free = [p for p in POSITIONS if p not in {s.position for s in shapes}]
    choices = ["recolour", "add"] + (["remove"] if len(shapes) > 1 else [])
    action = rng.choice(choices) if free else rng.choice([c for c in choices if c != "add"])
    if action == "recolour":
        target = rng.choice(shapes)
        old = f"{target.colour} {target.kind}"
        target.colour = rng.choice([c for c in COLOURS if c != target.colour])
        return shapes, f"Make the {old} {target.colour}."
    if action == "remove":
        target = rng.choice(shapes)
        shapes.remove(target)
        return shapes, f"Remove the {target.size} {target.colour} {target.kind}."
    added = _random_shape(rng, rng.choice(free))
    shapes.append(added)
    return shapes, f"Add {added.phrase()}."


def _look_alike(scene: Scene, pool: list[Scene], rng: random.Random, *keys) -> Scene:
    """Another scene of the same split sharing the first of ``keys`` it can (a random one if none does)."""
    others = [other for other in pool if other.index != scene.index]
    for key in keys:
        mine = key(scene)
        matches = [other for other in others if mine & key(other)]
        if matches:
            return rng.choice(matches)
    return rng.choice(others)


def generate_scenes(
    out_dir: str | Path,
    num_scenes: int = 3000,
    seed: int = 0,
    image_size: int = 64,
    test_fraction: float = 0.2,
    overwrite: bool = False,
    progress: bool = True,
    task_probability: Mapping[int, float] | None = None,
) -> dict:
    """Generate ``num_scenes`` scenes as an M-BEIR root in ``out_dir``; returns counts per split and task.

    Deterministic: the same arguments give byte-identical files. ``task_probability`` maps a task id
    (0, 2, 3, 7) to the chance that a scene gets a query of that task (default ``TASK_PROBABILITY``;
    absent tasks keep their default, 0 turns a task off): the demo raises task 7's share, the task
    where fusion matters.

    Example::

        counts = generate_scenes("./scenes", num_scenes=200, seed=0, image_size=48)
        counts["queries"]["train"]   # {"0": 160, "2": ..., "3": ..., "7": ...}
    """
    if num_scenes < 2:
        raise ValueError(f"num_scenes must be at least 2, got {num_scenes}")
    if not 8 <= image_size <= 1024:
        raise ValueError(f"image_size must be between 8 and 1024 pixels, got {image_size}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    probability = check_task_probability(task_probability)
    rng = random.Random(seed)
    scenes = _random_scenes(num_scenes, rng, test_fraction)
    by_split = {split: [s for s in scenes if s.split == split] for split in ("train", "test")}
    with atomic_directory(out_dir, overwrite=overwrite) as root:
        image_dir = root / "mbeir_images" / "scenes_images"
        image_dir.mkdir(parents=True)
        candidates: dict[str, list[dict]] = {"train": [], "test": []}
        queries: dict[str, list[dict]] = {"train": [], "test": []}
        next_did, next_qid = 1, 1

        def add_candidate(split: str, txt: str | None, img_path: str | None, modality: str) -> str:
            nonlocal next_did
            did = f"{SCENES_ID}:{next_did}"
            next_did += 1
            candidates[split].append({"did": did, "txt": txt, "img_path": img_path, "modality": modality})
            return did

        # Candidates first (every scene's image, hybrid document and caption), then queries.
        dids: dict[int, dict[str, str]] = {}
        edits: dict[int, tuple[str, str]] = {}
        scene_tasks: dict[int, list[int]] = {}
        for scene in tqdm(scenes, desc="drawing scenes", disable=not progress):
            relative = f"mbeir_images/scenes_images/{scene.index:06d}.png"
            draw_scene(scene.shapes, scene.background, image_size).save(root / relative, optimize=True)
            dids[scene.index] = {
                "image": add_candidate(scene.split, None, relative, "image"),
                "hybrid": add_candidate(scene.split, scene.snippet(), relative, "image,text"),
                "caption": add_candidate(scene.split, scene.caption(), None, "text"),
            }
            tasks = [t for t in TASKS if rng.random() < probability[t]]
            if 7 in tasks:
                edited_shapes, instruction = _edit(scene, rng)
                edited = f"mbeir_images/scenes_images/{scene.index:06d}_edit.png"
                draw_scene(edited_shapes, scene.background, image_size).save(root / edited, optimize=True)
                edits[scene.index] = (instruction, add_candidate(scene.split, None, edited, "image"))
            scene_tasks[scene.index] = tasks
        for scene in scenes:
            relative = f"mbeir_images/scenes_images/{scene.index:06d}.png"
            pool = by_split[scene.split]
            for task in scene_tasks[scene.index]:
                if task == 0:
                    other = _look_alike(scene, pool, rng, lambda s: {(x.kind, x.colour) for x in s.shapes})
                    record = ("text", scene.caption(), None, dids[scene.index]["image"], dids[other.index]["image"])
                elif task == 3:
                    other = _look_alike(scene, pool, rng, lambda s: {(x.kind, x.colour) for x in s.shapes})
                    record = ("image", None, relative, dids[scene.index]["caption"], dids[other.index]["caption"])
                elif task == 2:
                    shape = rng.choice(scene.shapes)
                    text = f"{shape.phrase()[2:].capitalize()}, a {scene.medium} from {scene.place}, {scene.year}."
                    other = _look_alike(scene, pool, rng, lambda s: {(s.place, s.year)}, lambda s: {s.place})
                    record = ("text", text, None, dids[scene.index]["hybrid"], dids[other.index]["hybrid"])
                else:
                    instruction, edited_did = edits[scene.index]
                    record = ("image,text", instruction, relative, edited_did, dids[scene.index]["image"])
                modality, txt, img_path, pos, neg = record
                queries[scene.split].append(
                    {
                        "qid": f"{SCENES_ID}:{next_qid}",
                        "query_txt": txt,
                        "query_img_path": img_path,
                        "query_modality": modality,
                        "pos_cand_list": [pos],
                        "neg_cand_list": [neg],
                        "task_id": task,
                    }
                )
                next_qid += 1
        counts = write_mbeir_source(root, "scenes", queries, candidates)
        with open(root / "scenes.jsonl", "w", encoding="utf-8") as handle:
            for scene in scenes:
                record = asdict(scene) | {"caption": scene.caption(), "snippet": scene.snippet()}
                handle.write(json.dumps(record) + "\n")
        metadata = {
            "generator": "dataset_builders.scenes.generate_scenes",
            "num_scenes": num_scenes, "seed": seed, "image_size": image_size, "test_fraction": test_fraction,
            **counts,
        }
        if probability != TASK_PROBABILITY:  # recorded when not the default: default roots stay byte-identical
            metadata["task_probability"] = {str(t): probability[t] for t in TASKS}
        (root / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    logger.info("generated %d scenes in %s: %s", num_scenes, out_dir, counts["queries"])
    return metadata


def load_scenes(root: str | Path, split: str = "train"):
    """Training rows (``datasets.Dataset`` with rows.TRAINING_FEATURES) of a generated scenes root.

    Images are read from the root's image folder when a row is accessed.
    """
    from .umr import load_training_rows

    return load_training_rows(root, split=split)
