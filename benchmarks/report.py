"""``python -m benchmarks.report RESULTS_DIR... [-o docs/benchmarks.md]``: the benchmark page from JSON results.

Reads every ``*.json`` result in each RESULTS_DIR (as ``python -m benchmarks NAME --json FILE`` writes
them; one folder per machine) and writes a short Markdown page: per machine, one table of value /
baseline / ratio / goal / whether it is met and what each benchmark measures with its key details;
then how to rerun. The page is
generated, never edited by hand, so the figures on it are always the ones a command produced.
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import load_benchmarks

GOAL = re.compile(r"^\s*(>=|<=|>|<)\s*([-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?)\s*(.*?)\s*$")
"""A goal that is a bound: an operator, a number and an optional unit (``>= 0.97``, ``<= 10 s``)."""

_OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le, ">": operator.gt,
                                                   "<": operator.lt}
REQUIRED_KEYS = ("name", "value", "unit", "baseline", "ratio", "goal", "details", "machine")
"""The benchmark contract of DESIGN.md; a file without these keys is not a benchmark result."""


def goal_met(res: dict[str, Any]) -> bool | None:
    """Whether ``res`` meets its goal, or None when the goal is no bound ("report") or the figure is missing.

    A goal with a unit (``<= 10 s``) bounds the value, a bare number (``>= 0.97``) bounds the ratio,
    as each benchmark states its goal.
    """
    match = GOAL.match(str(res.get("goal", "")))
    if match is None:
        return None
    op, bound, unit = match.groups()
    figure = res.get("value") if unit else res.get("ratio")
    if isinstance(figure, bool) or not isinstance(figure, (int, float)) or not math.isfinite(figure):
        return None
    return _OPS[op](figure, float(bound))


def verdict(res: dict[str, Any]) -> str:
    """The page's "met?" cell. A benchmark whose ratio comes from noisy repeats may give
    ``details["ratio_interval"]`` (about ±2 standard errors); when that interval holds the bound,
    the repeats cannot tell a met goal from a missed one, and the cell says so instead of guessing."""
    met = goal_met(res)
    interval = (res.get("details") or {}).get("ratio_interval")
    match = GOAL.match(str(res.get("goal", "")))
    if met is not None and interval and match and not match.group(3):
        low, high = interval
        if low < float(match.group(2)) < high:
            return f"not settled ({fmt(low)}-{fmt(high)})"
    return {True: "yes", False: "**no**", None: "—"}[met]


def load_results(folder: Path) -> list[dict[str, Any]]:
    """The benchmark results in ``folder``, sorted by name; a file that is not one raises ValueError."""
    results = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable JSON file ({exc})") from exc
        missing = [k for k in REQUIRED_KEYS if not isinstance(data, dict) or k not in data]
        if missing:
            raise ValueError(f"{path}: not a benchmark result (missing {', '.join(missing)})")
        results.append(data)
    if not results:
        raise ValueError(f"{folder}: no *.json benchmark results; write them with "
                         "`python -m benchmarks NAME --json {folder}/NAME.json`")
    return sorted(results, key=lambda r: r["name"])


def fmt(value: Any, digits: int = 3) -> str:
    """A figure for the page: ``digits`` significant digits, thousands separated, "—" when absent."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            return str(value)
        if 1000 <= abs(value) < 1e6:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt(v, digits)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v, digits) for v in value)
    return str(value)


def _detail_lines(details: dict[str, Any]) -> list[str]:
    """One bullet per detail; a dict of dicts (one entry per model or variant) gets one sub-bullet each."""
    lines = []
    for key, value in details.items():
        if isinstance(value, dict) and any(isinstance(v, dict) for v in value.values()):
            lines.append(f"- {key}:")
            lines += [f"  - {sub}: {fmt(inner)}" for sub, inner in value.items()]
        else:
            lines.append(f"- {key}: {fmt(value)}")
    return lines


def _machine_line(machine: dict[str, Any]) -> str:
    gpu = machine.get("cuda") or "no GPU"
    threads = f", {machine['torch_threads']} torch threads" if machine.get("torch_threads") else ""
    return (f"{machine.get('platform', '?')}, {machine.get('cpu_count', '?')} CPUs{threads}, {gpu}, "
            f"torch {machine.get('torch', '?')}")


def render(groups: list[tuple[str, list[dict[str, Any]]]], descriptions: dict[str, str]) -> str:
    """The Markdown page: one section per ``(folder name, results)`` group, which is one machine's
    run of the suite (a CPU and a GPU, say); ``descriptions`` maps a benchmark name to what it measures."""
    lines = ["# Benchmarks", "",
             "Generated by `python -m benchmarks.report` from the JSON results of `python -m benchmarks`; "
             "every ratio compares two things measured in the same process run.", ""]
    described: set[str] = set()
    for folder, results in groups:
        lines += _section(folder, results, descriptions, described, titled=len(groups) > 1)
    folders = " ".join(folder for folder, _ in groups)
    names = " ".join(sorted({r["name"] for _, results in groups for r in results}))
    lines += ["## How to rerun", "", "On each machine (GPU benchmarks train in bf16 where a GPU is visible; "
              "`bash benchmarks/gpu_checks.sh` adds the GPU training checks):", "", "```bash",
              f"for name in {names}; do",
              "  python -m benchmarks $name --json results/$name.json   # add --quick for a smoke run",
              "done",
              f"python -m benchmarks.report {folders if len(groups) > 1 else 'results'} -o docs/benchmarks.md",
              "```", ""]
    return "\n".join(lines)


def _section(folder: str, results: list[dict[str, Any]], descriptions: dict[str, str], described: set[str],
             titled: bool) -> list[str]:
    """One machine's table and details; a benchmark's description is given at its first appearance."""
    machines: dict[str, list[str]] = {}
    for res in results:
        machines.setdefault(_machine_line(res["machine"]), []).append(res["name"])
    gpu = next((r["machine"].get("cuda") for r in results if r["machine"].get("cuda")), None)
    sub = "###" if titled else "##"
    lines = [f"## Results on {folder} ({gpu or 'CPU'})" if titled else "## Machine", ""]
    for line, names in machines.items():
        lines.append(f"- {line}" + (f" ({', '.join(names)})" if len(machines) > 1 else ""))
    lines += [""] if titled else ["", "## Results", ""]
    lines += ["| benchmark | value | baseline | ratio | goal | met? |", "|---|---|---|---|---|---|"]
    for res in results:
        lines.append(f"| `{res['name']}` | {fmt(res['value'])} {res['unit']} | {fmt(res['baseline'])} | "
                     f"{fmt(res['ratio'], 4)} | {res['goal']} | {verdict(res)} |")
    lines += ["", f"{sub} What each measures" + (f" ({folder})" if titled else ""), ""]
    for res in results:
        lines += [f"{sub}# `{res['name']}`", ""]
        if descriptions.get(res["name"]) and res["name"] not in described:
            lines += [descriptions[res["name"]], ""]
            described.add(res["name"])
        lines += _detail_lines(res["details"])
        lines.append("")
    return lines


def _descriptions() -> dict[str, str]:
    """The first paragraph of each registered benchmark's docstring, on one line."""
    out = {}
    for name, fn in load_benchmarks().items():
        first = (fn.__doc__ or "").strip().split("\n\n")[0]
        out[name] = " ".join(part.strip() for part in first.splitlines())
    return out


def main(argv: list[str] | None = None) -> int:
    """Write the page (to ``-o``, else stdout); exit code 2 with one line when the folder is unusable."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    parser.add_argument("results_dirs", type=Path, nargs="+", metavar="results_dir",
                        help="folder of *.json benchmark results, one per machine")
    parser.add_argument("-o", "--output", type=Path, default=None, help="Markdown file to write")
    args = parser.parse_args(argv)
    try:
        page = render([(folder.name, load_results(folder)) for folder in args.results_dirs], _descriptions())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.output is None:
        sys.stdout.write(page)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
