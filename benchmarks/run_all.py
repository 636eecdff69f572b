"""Every benchmark from one entry point (``make bench``), each writing its JSON to ``benchmarks/results/``, then one
summary table marking each target met / missed.

Each benchmark runs as its own process (``--only`` picks some), with sizes reduced where the full run takes far
longer than ``make bench``'s 20 minutes on 2 cores (the reduction is recorded in its JSON as ``run_all.reduced``;
the full-size commands are in each module's docstring). After a run its JSON gets an ``environment`` block (CPU
model, thread count, library versions, load average: :func:`benchmarks.encode.machine_info`) and a ``run_all``
block (command, seconds, exit code, log file). A benchmark that would start after ``--budget-minutes`` is not run
(marked so in the table). The table is printed and written to ``results/summary.md`` and ``results/summary.json``.

    .venv/bin/python -m benchmarks.run_all                  # make bench
    .venv/bin/python -m benchmarks.run_all --only encode st_encode
    .venv/bin/python -m benchmarks.run_all --summary-only   # the table of the JSONs already in results/
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

# name -> (command after the interpreter, timeout seconds, what was reduced and why; None: the full run)
BENCHMARKS: dict[str, tuple[list[str], int, str | None]] = {
    "encode": (["-m", "benchmarks.encode", "--out", "{out}"], 1200, None),
    "encode_harness": (["-m", "benchmarks.encode", "--part", "harness", "--out", "{out}"], 600, None),
    "st_encode": (["benchmarks/st_encode.py", "--out", "{out}"], 300, None),
    "app_latency": (["benchmarks/app_latency.py", "--out", "{out}"], 400, None),
    "eval_scale": (["benchmarks/eval_scale.py", "--out", "{out}"], 600, None),
    "build_umr": (["benchmarks/build_umr.py", "--out", "{out}"], 600, None),
    "check_images": (["benchmarks/check_images.py", "--out", "{out}"], 300, None),
    "fuzz": (["benchmarks/fuzz.py", "--seed", "17", "--out", "{out}"], 300, None),
    "search": (["benchmarks/search.py", "--n", "100000", "--topics", "128", "--components", "2048", "--nlist", "512",
                "--train-size", "20000", "--queries", "500", "--skip-hnsw", "--out", "{out}"], 400,
               "100K x 768 vectors, 500 queries, nlist 512, no HNSW (its target is for 1M vectors, 1000 queries, "
               "nlist 4096: 19 minutes with HNSW, 5 without)"),
    "train_step": (["benchmarks/train_step.py", "--configs", "plain_b16", "--steps-b16", "1", "--out", "{out}"], 600,
                   "plain batch 16 only, 1 step (the warm-up included; default: 6 configurations up to batch 64, 24 "
                   "minutes): the cached-loss RSS target needs batch 64"),
}


# ---------------------------------------------------------------------------------------------------- targets
def _row(benchmark: str, target: str, value: Any, spec: str, met: bool | None, note: str = "") -> dict:
    status = "met" if met is True else "missed" if met is False else "not measured"
    return {"benchmark": benchmark, "target": target, "value": value, "spec": spec, "status": status, "note": note}


def _rounded(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def _targets_block(name: str, data: dict) -> list[dict]:
    """Benchmarks that write ``targets: {name: {value, op, target, met, note?, evidence?}}`` (benchmarks/encode.py)."""
    rows = []
    for target, entry in data.get("targets", {}).items():
        note = entry.get("evidence") or entry.get("note") or ""
        rows.append(_row(name, target, _rounded(entry.get("value")), f"{entry.get('op', '')} {entry.get('target')}",
                         entry.get("met"), note if isinstance(note, str) else json.dumps(note)))
    return rows


def _get(data: dict, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def rows_for(name: str, data: dict) -> list[dict]:
    """The target rows of one benchmark's JSON."""
    if "targets" in data and name.startswith("encode"):
        return _targets_block(name, data)
    if name == "st_encode":
        value, target = data.get("throughput_ratio_st_over_direct"), data.get("target_ratio", 0.95)
        fast = data.get("throughput_ratio_fast_kernels_over_st")
        return [_row(name, "st / direct throughput", _rounded(value), f">= {target}",
                     None if value is None else value >= target,
                     "" if fast is None else f"encode_items' fast path over sentence-transformers: {fast:.2f}x")]
    if name == "app_latency":
        worst = data.get("worst_p95_ms_with_the_apps_default", data.get("worst_p95_ms"))
        return [_row(name, "worst p95 query latency (ms)", worst, f"< {data.get('target_ms', 1000.0)}",
                     data.get("meets_target"))]
    if name == "eval_scale":
        return [_row(name, "peak RSS ratio largest / smallest pool", data.get("peak_rss_ratio_largest_vs_smallest"),
                     data.get("target", "<= 1.3"), data.get("meets_target"))]
    if name == "build_umr":
        return [_row(name, "build peak RSS (MB), 1M queries / 5M candidates", data.get("build_peak_rss_mb"),
                     f"<= {data.get('target_peak_rss_mb', 2048)}", data.get("meets_target"))]
    if name == "search":
        rows = []
        reduced = _get(data, "run_all", "reduced")
        for kind in ("ivf", "hnsw"):
            target = _get(data, "results", kind, "target")
            if isinstance(target, dict):
                sweep = _get(data, "results", kind, "sweep") or []
                good = [point for point in sweep if point.get("recall@10", 0) >= 0.95]
                best = max(good, key=lambda point: point.get("speedup_vs_exact", 0)) if good else {}
                value = best.get("speedup_vs_exact")
                note = f"best at recall@10 >= 0.95: {json.dumps(best)}"
                if reduced:  # the rule is stated for 1M vectors: exact search is far cheaper at the reduced size
                    rows.append(_row(name, f"{kind}: {target.get('rule', '')}", value, "at 1M vectors", None,
                                     f"reduced run ({reduced.split(' (')[0]}); {note}"))
                else:
                    rows.append(_row(name, f"{kind}: {target.get('rule', '')}", value, "see rule", target.get("met"),
                                     note))
        return rows or [_row(name, "(no target in the JSON)", None, "", None)]
    if name == "fuzz":
        failures = data.get("total_failures")
        return [_row(name, "fuzzing failures", failures, "== 0", None if failures is None else failures == 0)]
    if name == "train_step":
        summary = data.get("summary") or {}
        if "cached_rss_target_met" in summary:
            return [_row(name, "cached-loss peak RSS growth, batch 16 -> 64", summary.get("cached_rss_growth_16_to_64"),
                         "<= 0.10", summary["cached_rss_target_met"])]
        seconds = _get(data, "results", "plain_b16", "seconds_per_example")
        return [_row(name, "cached-loss peak RSS growth, batch 16 -> 64", None, "<= 0.10", None,
                     f"needs batch 64 (not in the reduced run); plain batch 16: {seconds} s per example")]
    if name == "check_images":
        return [_row(name, "(no target: images per second recorded)", data.get("images_per_second"), "", None,
                     "information only")]
    return [_row(name, "(unknown benchmark)", None, "", None)]


def summary_rows(results: Path, names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        path = results / f"{name}.json"
        if not path.is_file():
            rows.append({"benchmark": name, "target": "(no result)", "value": None, "spec": "", "status": "not run",
                         "note": ""})
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        failed = _get(data, "run_all", "exit_code")
        rows += rows_for(name, data)
        if failed not in (None, 0):
            rows.append(_row(name, "(run)", failed, "exit code 0", False, _get(data, "run_all", "log") or ""))
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return json.dumps(value)[:60]
    return str(value).replace("|", "/")


def summary_table(rows: list[dict]) -> str:
    lines = ["| benchmark | target | value | required | status | note |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['benchmark']} | {row['target']} | {_cell(row['value'])} | {row['spec']} | "
                     f"{row['status']} | {_cell(row['note'])[:200]} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- running
def run_one(name: str, python: str, log_dir: Path) -> dict:
    command, timeout, reduced = BENCHMARKS[name]
    out = RESULTS / f"{name}.json"
    argv = [python, *[part.format(out=out) for part in command]]
    log = log_dir / f"{name}.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        try:
            code = subprocess.run(argv, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = f"timed out after {timeout} s"
    seconds = round(time.perf_counter() - started, 1)
    info = {"command": " ".join(["python", *argv[1:]]).replace(str(REPO) + "/", ""), "seconds": seconds,
            "exit_code": code, "log": str(log.relative_to(REPO)), "reduced": reduced}
    data = json.loads(out.read_text(encoding="utf-8")) if out.is_file() and code == 0 else {}
    if code != 0:
        data = {"benchmark": name, "error": f"exit code {code}", "log_tail": log.read_text()[-2000:]}
    import torch

    from benchmarks.encode import machine_info

    data["environment"] = machine_info(torch.get_num_threads())
    data["run_all"] = info
    out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=list(BENCHMARKS), help="run these only (default: all)")
    parser.add_argument("--budget-minutes", type=float, default=20.0,
                        help="start no benchmark after this many minutes")
    parser.add_argument("--summary-only", action="store_true", help="print the table of the JSONs in results/")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    RESULTS.mkdir(parents=True, exist_ok=True)
    names = args.only or list(BENCHMARKS)
    started = time.perf_counter()
    runs = {}
    if not args.summary_only:
        for name in names:
            elapsed = (time.perf_counter() - started) / 60
            if elapsed > args.budget_minutes:
                print(f"[run_all] {name}: not run (the {args.budget_minutes} min budget is spent)", flush=True)
                (RESULTS / f"{name}.json").unlink(missing_ok=True)
                continue
            print(f"[run_all] {name} ({elapsed:.1f} min elapsed) ...", flush=True)
            runs[name] = run_one(name, sys.executable, RESULTS)
            print(f"[run_all] {name}: exit {runs[name]['exit_code']} in {runs[name]['seconds']} s", flush=True)
    rows = summary_rows(RESULTS, names)
    table = summary_table(rows)
    date = datetime.date.today().isoformat()
    total = round(time.perf_counter() - started, 1)
    header = (f"`make bench` ({'summary of existing results' if args.summary_only else f'{total} s'}), {date}, "
              f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end: speed figures are ratios "
              "measured side by side")
    (RESULTS / "summary.md").write_text(header + "\n\n" + table + "\n", encoding="utf-8")
    (RESULTS / "summary.json").write_text(json.dumps({"date": date, "seconds": total, "runs": runs, "rows": rows},
                                                     indent=2) + "\n", encoding="utf-8")
    print("\n" + header + "\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
