"""The package layers, checked from the source: every import (module-level and lazy, ``import_module`` of a
literal name included) goes down or stays inside its package; no two packages import each other; no
``_private`` name crosses a package.

Layers, bottom to top (DESIGN.md); eval moreover imports nothing of UniCA (``unica``, ``modeling_unica``,
``configuration_unica``)::

    0  configuration_unica, modeling_unica    remote code: torch + transformers + PIL only
    1  dataset_builders                        data: builds, validates, exports (no model, no upload)
    2  unica (core)                            checkpoints, encoding, losses, collator, trainer, ST, CoCoA
    3  eval                                    evaluates any encoder (knows no UniCA internals)
    4  unica.apps (and unica.__main__)         CLI commands, demo, ablation runner, Hub upload
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Most specific prefix first: unica.apps is its own (top) layer inside the unica folder.
LAYERS = [
    ("unica.apps", 4),
    ("unica.__main__", 4),
    ("eval", 3),
    ("unica", 2),
    ("dataset_builders", 1),
    ("configuration_unica", 0),
    ("modeling_unica", 0),
]
# Downward, yet not allowed: eval evaluates any encoder (UniCA, a converted VISTA, any sentence-transformers
# model) and so knows nothing of UniCA; the application layer hands it a UniCA encoder.
FORBIDDEN = {("eval", "unica"), ("eval", "modeling_unica"), ("eval", "configuration_unica")}
PACKAGE_FOLDERS = ("configuration_unica", "modeling_unica", "dataset_builders", "unica", "eval")


def package_of(module: str) -> str | None:
    """The layer prefix a module belongs to (``unica.apps.cli`` -> ``unica.apps``), None for third-party."""
    for prefix, _ in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return None


def layer_of(package: str) -> int:
    return dict(LAYERS)[package]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) for every import in a file, at any depth."""
    name = module_name(path)
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.module == "__future__":
                continue
            if node.level:  # relative: resolve against this module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.append((node.lineno, target, [alias.name for alias in node.names]))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and not node.args[0].value.startswith(".")
        ):
            found.append((node.lineno, node.args[0].value, []))
    return found


def project_files() -> list[Path]:
    return sorted(path for folder in PACKAGE_FOLDERS for path in (ROOT / folder).rglob("*.py"))


def violations() -> dict[str, list[str]]:
    upward, private, edges = [], [], {}
    for path in project_files():
        source = package_of(module_name(path))
        for line, target, names in imports_of(path):
            destination = package_of(target)
            if destination is None or destination == source:
                continue
            where = f"{path.relative_to(ROOT)}:{line}"
            edges.setdefault((source, destination), where)
            if layer_of(destination) > layer_of(source):
                upward.append(f"{where}: {source} (layer {layer_of(source)}) imports {target} "
                              f"(layer {layer_of(destination)})")
            elif (source, destination) in FORBIDDEN:
                upward.append(f"{where}: {source} imports {target}, which it must not know")
            hidden = [n for n in names if n.startswith("_")] + [p for p in target.split(".") if p.startswith("_")
                                                                 and p != "__main__"]
            if hidden:
                private.append(f"{where}: imports private {hidden} from {target}")
    two_way = [f"{a} <-> {b} ({edges[(a, b)]}, {edges[(b, a)]})" for a, b in edges if (b, a) in edges and a < b]
    return {"upward": upward, "two-way": two_way, "private": private}


@pytest.mark.parametrize("kind", ["upward", "two-way", "private"])
def test_no_layer_violations(kind):
    found = violations()[kind]
    assert not found, f"{len(found)} {kind} imports:\n" + "\n".join(found)


def test_the_checker_sees_lazy_relative_and_string_imports(tmp_path):
    """The parser finds what the layering rules are about, so a clean result means something."""
    sample = ROOT / "unica" / "apps" / "cli.py"
    targets = {target for _, target, _ in imports_of(sample)}
    assert "importlib" in targets and "logging" in targets
    lazy = {target for _, target, _ in imports_of(ROOT / "dataset_builders" / "rows.py")}
    assert "modeling_unica.processing_unica" in lazy  # imported inside a function
    relative = {target for _, target, _ in imports_of(ROOT / "dataset_builders" / "umr.py")}
    assert "dataset_builders.mbeir" in relative  # from .mbeir import ...
    assert package_of("unica.apps.cli") == "unica.apps" and package_of("unica.losses") == "unica"
    assert package_of("eval.harness") == "eval" and package_of("numpy") is None
