"""The README's examples run as written, in order, in a fresh copy of the working tree (like a fresh clone
after ``make demo``: its ``.venv`` is linked in, ``.venv/bin`` is on PATH, ``HF_HUB_OFFLINE=1``).

Every ```bash and ```python block runs (python blocks each in a fresh ``python -c``, as pasted into a
new interpreter) unless the line right before it (blank lines aside) is an explicit marker:

* ``<!-- readme-test: skip (why) -->``: not run; the reason is required (it needs the Hub, a GPU, torchrun,
  a download, ...);
* ``<!-- readme-test: file NAME -->``: the block (e.g. a YAML config) is written to ``NAME`` for the
  blocks after it.

Other blocks (yaml fragments without a marker, tables) are not run. A failure names the block's line
in README.md and shows its code and output. One test, in order: later blocks use what earlier ones made.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
VENV = REPO / ".venv"
MARKER = re.compile(r"^<!--\s*readme-test:\s*(?P<directive>[\w-]+)\s*(?P<argument>.*?)\s*-->$")
RUNNABLE = ("bash", "python")
BLOCK_TIMEOUT = 300


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    directive: str | None = None
    argument: str = ""


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of ``text`` with the ``readme-test`` marker that precedes each (if any)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    marker: re.Match | None = None
    index = 0
    while index < len(lines):
        stripped = lines[index].strip()
        if stripped.startswith("```"):
            end = index + 1
            while end < len(lines) and not lines[end].strip().startswith("```"):
                end += 1
            if end == len(lines):
                raise ValueError(f"README.md:{index + 1}: code block never closed")
            block = Block(index + 1, stripped[3:].strip(), "\n".join(lines[index + 1 : end]) + "\n")
            if marker is not None:
                block.directive, block.argument = marker["directive"], marker["argument"]
            blocks.append(block)
            marker, index = None, end + 1
            continue
        found = MARKER.match(stripped)
        if found:
            marker = found
        elif stripped:
            marker = None  # a marker applies only to the block right after it
        index += 1
    return blocks


def check_markers(blocks: list[Block]) -> None:
    for block in blocks:
        where = f"README.md:{block.line}"
        if block.directive == "skip" and not re.fullmatch(r"\(.+\)", block.argument):
            raise ValueError(f"{where}: a skip marker needs its reason in parentheses: readme-test: skip (why)")
        if block.directive == "file" and not re.fullmatch(r"[\w./-]+", block.argument):
            raise ValueError(f"{where}: readme-test: file needs a relative file name, got {block.argument!r}")
        if block.directive not in (None, "skip", "file"):
            raise ValueError(f"{where}: unknown readme-test directive {block.directive!r} (skip or file)")


def test_marker_parsing() -> None:
    text = ("<!-- readme-test: skip (needs the Hub) -->\n\n```bash\nunica push\n```\nprose\n"
            "<!-- readme-test: file a.yaml -->\n```yaml\nk: 1\n```\n<!-- readme-test: skip (x) -->\nprose\n"
            "```python\nprint(1)\n```\n")
    blocks = readme_blocks(text)
    assert [(b.line, b.language, b.directive, b.argument) for b in blocks] == [
        (3, "bash", "skip", "(needs the Hub)"), (8, "yaml", "file", "a.yaml"), (13, "python", None, "")]
    assert blocks[2].code == "print(1)\n"
    with pytest.raises(ValueError, match=r"README.md:2: a skip marker needs its reason"):
        check_markers(readme_blocks("<!-- readme-test: skip -->\n```bash\nls\n```\n"))


def _fresh_clone(target: Path) -> None:
    """The working tree's files (tracked and new, not ignored) copied to ``target``, with ``.venv`` linked."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, check=True,
        capture_output=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if name.split("/")[0] == ".venv" or (not source.exists() and not source.is_symlink()):
            continue  # the venv (linked below), or a file deleted in the working tree
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination, follow_symlinks=False)
    (target / ".venv").symlink_to(VENV)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.mark.slow
def test_readme_examples_run_in_order(tmp_path) -> None:
    if not (VENV / "bin" / "unica").exists():
        pytest.skip("no .venv with the unica command (run `make venv`)")
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    check_markers(blocks)
    clone = tmp_path / "clone"
    _fresh_clone(clone)
    env = {**os.environ, "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"), "TOKENIZERS_PARALLELISM": "false",
           "MPLBACKEND": "Agg", "VIRTUAL_ENV": str(VENV)}
    ran, timings = 0, []
    for block in blocks:
        if block.directive == "skip":
            continue
        if block.directive == "file":
            (clone / block.argument).parent.mkdir(parents=True, exist_ok=True)
            (clone / block.argument).write_text(block.code, encoding="utf-8")
            continue
        if block.language not in RUNNABLE:
            continue
        if block.language == "bash":
            command = ["bash", "-e", "-o", "pipefail", "-c", block.code]
        else:
            command = [str(VENV / "bin" / "python"), "-c", block.code]
        started, cpu = time.perf_counter(), _children_cpu()
        try:
            result = subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
            returncode, output = result.returncode, result.stdout + result.stderr
        except subprocess.TimeoutExpired as error:
            returncode = "timeout"
            output = (error.stdout or b"").decode(errors="replace") + (error.stderr or b"").decode(errors="replace")
        timings.append(f"README.md:{block.line} {time.perf_counter() - started:.1f}s ({_children_cpu() - cpu:.1f}s CPU)")
        print(timings[-1], file=sys.stderr)
        if returncode != 0:
            pytest.fail(
                f"README.md:{block.line} ({block.language} block) failed (exit {returncode}):\n{block.code}\n"
                f"--- output (last 6000 characters) ---\n{output[-6000:]}", pytrace=False,
            )
        ran += 1
    assert ran >= 10, f"only {ran} README blocks ran; are the skip markers right?"
