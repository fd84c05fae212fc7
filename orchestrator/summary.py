"""Summaries of finished runs and sweeps, built only from the files each run wrote itself.

A run folder's ``config.json``, ``results.json`` and metric rows (``MetricsLogger``'s resolved view)
are the source of truth: Tune keeps only the rows of a trial's last invocation after a restore
(spec/ray.md §4), and ``spectral-gpt compare`` must work on any runs, swept or not. No Ray here.

A summary is one row per run, one aggregate per ablation (mean and sample std over its seeds), and
the files ``summary.parquet`` (the run rows), ``summary.json`` (both), ``summary.md``, the figures in
``plots/`` and ``summary.html``, one page with the tables and the figures inlined that opens offline.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestrator.monitoring import ConfigTracker, VisualizationManager, atomic
from orchestrator.monitoring.metrics import read_run_metrics
from orchestrator.summary_plots import write_summary_plots

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"
"""Marks a sweep folder and records its grid and the settings of every trial."""

RUN_COLUMNS: dict[str, str] = {
    "run": "string", "ablation": "string", "seed": "int64", "status": "string", "params": "int64",
    "steps": "int64", "best_val_loss": "float64", "best_step": "int64", "val_loss": "float64",
    "perplexity": "float64", "tokens_per_sec": "float64", "wall_time_s": "float64", "peak_memory_mb": "float64",
    "path": "string",
}
"""One summary row per run, with its Parquet type."""

AGGREGATED = ("best_val_loss", "best_step", "val_loss", "perplexity", "tokens_per_sec", "wall_time_s")
"""Run columns averaged over the seeds of an ablation, each with its sample standard deviation."""


@dataclass
class RunRecord:
    """What one run folder says about itself."""

    run_dir: Path
    config: dict[str, Any]
    """``config.json``'s ``config``: the run's settings as saved when it started."""
    results: dict[str, Any]
    """``results.json`` (``{}`` while the run has not ended)."""
    rows: list[dict[str, Any]] = field(default_factory=list)
    """Resolved metric rows: one per logged step, replays of resumed attempts removed."""
    params: int | None = None

    @property
    def ablation(self) -> str:
        return str(self.config.get("ablation", "?"))

    @property
    def seed(self) -> int | None:
        return self.config.get("spec", {}).get("train", {}).get("seed")

    @property
    def status(self) -> str:
        return str(self.results.get("status") or "unfinished")


def load_run(run_dir: Path) -> RunRecord | None:
    """The record of ``run_dir``, or None when it holds no ``config.json`` (not a run, or not started),
    or files that do not hold what a run writes (hand-edited, another program's): those are skipped
    with a warning, so one such folder never stops ``ls`` or ``compare`` halfway through."""
    if not (run_dir / "config.json").is_file():
        return None
    tracker = ConfigTracker(run_dir)
    saved = tracker.load_config()
    if not saved:
        return None
    try:
        rows = read_run_metrics(run_dir / "logs")
        record = RunRecord(run_dir=run_dir, config=saved.get("config") or {}, results=tracker.load_results(),
                           rows=rows, params=(saved.get("model") or {}).get("num_parameters"))
        run_row(record)  # reads every value a summary shows: a malformed one fails here, not mid-write
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError, OSError) as exc:
        log.warning("skipped %s: its files do not hold what a run writes (%s: %s)", run_dir,
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return None
    return record


def load_sweep_record(sweep_dir: Path) -> dict[str, Any]:
    """``sweep.json`` of ``sweep_dir``, ``{}`` when it is not a sweep folder."""
    try:
        record = json.loads((sweep_dir / SWEEP_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def sweep_run_dirs(sweep_dir: Path, record: dict[str, Any]) -> list[Path]:
    """The run folders of a sweep, in grid order (whether or not each has started yet)."""
    trials = record.get("trials")
    return [sweep_dir / trial["name"] for trial in (trials if isinstance(trials, list) else [])
            if isinstance(trial, dict) and isinstance(trial.get("name"), str) and trial["name"]]


def discover_runs(paths: Iterable[Path]) -> list[RunRecord]:
    """Every run in ``paths``: each is a run folder, a sweep folder, or a folder of runs and sweeps."""
    found: dict[Path, RunRecord] = {}
    for path in paths:
        for record in _runs_under(Path(path), depth=2):
            found.setdefault(record.run_dir.resolve(), record)  # a run named twice counts once
    return list(found.values())


def _runs_under(path: Path, depth: int) -> list[RunRecord]:
    record = load_run(path)
    if record is not None:
        return [record]
    sweep = load_sweep_record(path)
    if sweep:
        return [r for r in (load_run(d) for d in sweep_run_dirs(path, sweep)) if r is not None]
    if depth == 0 or not path.is_dir():
        return []
    children = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [r for child in children for r in _runs_under(child, depth - 1)]


def run_row(record: RunRecord) -> dict[str, Any]:
    """The summary row of one run: best and final validation loss from its rows, cost from its results.

    ``best_val_loss`` is the lowest validation loss logged (the earliest step on a tie); results.json's
    own ``best_val_loss`` is early stopping's, which counts only gains above ``min_delta``.
    ``wall_time_s`` sums, over attempts, the time from an attempt's first to its last logged row.
    """
    final = record.results.get("final_metrics") or {}
    rows = record.rows
    validated = [(r["step"], r["val_loss"]) for r in rows if _finite(r.get("val_loss"))]
    best = min(validated, key=lambda v: v[1]) if validated else None
    last_val = validated[-1][1] if validated else math.nan
    peak_memory = final.get("peak_memory_mb")  # None for runs of versions that did not record it
    tokens_per_sec = final.get("tokens_per_second")
    if tokens_per_sec is None and rows:
        tokens_per_sec = rows[-1].get("tokens_per_sec")
    row = {
        "run": record.run_dir.name, "ablation": record.ablation, "seed": record.seed, "status": record.status,
        "params": record.params, "steps": final.get("total_steps") or (rows[-1]["step"] + 1 if rows else 0),
        "best_val_loss": best[1] if best else math.nan, "best_step": best[0] if best else None,
        "val_loss": last_val, "perplexity": math.exp(min(last_val, 50.0)) if validated else math.nan,
        "tokens_per_sec": _float(tokens_per_sec), "wall_time_s": _wall_time(rows),
        "peak_memory_mb": peak_memory if _finite(peak_memory) else None, "path": str(record.run_dir),
    }
    _check_column_types(row)
    return row


INT64_RANGE = range(-(1 << 63), 1 << 63)


def _check_column_types(row: dict[str, Any]) -> None:
    """TypeError unless each value fits its :data:`RUN_COLUMNS` type (None for missing), which the
    Parquet file will demand after the plots are already written."""
    for column, kind in RUN_COLUMNS.items():
        value = row[column]
        fits = (value is None or (kind == "string" and isinstance(value, str))
                or (kind == "int64" and isinstance(value, int) and not isinstance(value, bool) and value in INT64_RANGE)
                or (kind == "float64" and isinstance(value, (int, float)) and not isinstance(value, bool)))
        if not fits:
            raise TypeError(f"{column}={value!r} is not {kind}")


def _wall_time(rows: Sequence[dict[str, Any]]) -> float:
    spans: dict[int, list[datetime]] = {}
    for row in rows:
        try:
            stamp = datetime.fromisoformat(str(row["timestamp"]))
        except (KeyError, ValueError):
            continue
        bounds = spans.setdefault(int(row.get("attempt", 1)), [stamp, stamp])
        bounds[0], bounds[1] = min(bounds[0], stamp), max(bounds[1], stamp)
    return sum((end - start).total_seconds() for start, end in spans.values()) if spans else math.nan


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per ablation (first-seen order): mean and sample std over its runs of each column.

    A diverged or unfinished run's missing values (NaN) are left out of its ablation's mean, so one
    bad seed never hides the others; ``runs`` counts them all and ``statuses`` says what happened.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["ablation"], []).append(row)
    out = []
    for ablation, members in groups.items():
        entry: dict[str, Any] = {"ablation": ablation, "runs": len(members),
                                 "seeds": [m["seed"] for m in members], "params": members[0]["params"],
                                 "statuses": sorted({m["status"] for m in members})}
        for column in AGGREGATED:
            values = [float(m[column]) for m in members if _finite(m[column])]
            entry[f"{column}_mean"] = statistics.fmean(values) if values else math.nan
            entry[f"{column}_std"] = statistics.stdev(values) if len(values) > 1 else math.nan
        out.append(entry)
    return out


@dataclass
class Summary:
    """A written summary: its rows and where each file went."""

    rows: list[dict[str, Any]]
    ablations: list[dict[str, Any]]
    files: dict[str, Path]


def write_summary(records: Sequence[RunRecord], out_dir: Path, title: str) -> Summary:
    """Write the summary files of ``records`` into ``out_dir`` (created if needed); raises on I/O errors."""
    if not records:
        raise ValueError("no runs to summarise")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [run_row(r) for r in records]
    ablations = aggregate(rows)
    plot_runs = [{"name": r.run_dir.name, "ablation": r.ablation, "seed": r.seed, "rows": r.rows} for r in records]
    files = {f"plot:{name}": path for name, path in
             write_summary_plots(plot_runs, ablations, out_dir / "plots").items()}
    comparison = VisualizationManager(out_dir / "plots").generate_comparison_plots(
        [{"name": p["name"], "rows": p["rows"]} for p in plot_runs if p["rows"]])
    if comparison is not None:
        files["plot:experiment_comparison"] = comparison
    files["parquet"] = _write_parquet(rows, out_dir / "summary.parquet")
    files["json"] = out_dir / "summary.json"
    atomic.write_json_atomic(files["json"], {"title": title, "created": datetime.now().isoformat(),
                                             "runs": rows, "ablations": ablations})
    markdown = markdown_tables(rows, ablations)
    files["markdown"] = out_dir / "summary.md"
    atomic.write_bytes_atomic(files["markdown"], f"# {title}\n\n{markdown}".encode())
    files["html"] = out_dir / "summary.html"
    plots = {k.removeprefix("plot:"): v for k, v in files.items() if k.startswith("plot:")}
    atomic.write_bytes_atomic(files["html"], _html_page(title, rows, ablations, plots).encode())
    return Summary(rows, ablations, files)


def _write_parquet(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([pa.field(name, getattr(pa, kind)()) for name, kind in RUN_COLUMNS.items()])
    table = pa.Table.from_pylist([{k: _null_nan(r[k]) for k in RUN_COLUMNS} for r in rows], schema=schema)
    atomic.write_atomic(path, lambda fh: pq.write_table(table, fh))
    return path


TABLE_HEADERS = ("ablation", "runs", "params", "best val loss", "best step", "val loss", "perplexity",
                 "tokens/s", "wall time (s)", "status")
RUN_HEADERS = ("run", "seed", "status", "steps", "best val loss", "best step", "val loss", "perplexity",
               "tokens/s", "wall time (s)")


def ablation_cells(entry: dict[str, Any]) -> list[str]:
    """One ablation as table cells; ``mean ± std`` where it has more than one run."""
    def cell(column: str, fmt: str) -> str:
        mean, std = entry[f"{column}_mean"], entry[f"{column}_std"]
        if not _finite(mean):
            return "-"
        return f"{mean:{fmt}} ± {std:{fmt}}" if _finite(std) else f"{mean:{fmt}}"

    return [entry["ablation"], str(entry["runs"]), _count(entry["params"]), cell("best_val_loss", ".4f"),
            cell("best_step", ".0f"), cell("val_loss", ".4f"), cell("perplexity", ".2f"),
            cell("tokens_per_sec", ",.0f"), cell("wall_time_s", ".1f"), ", ".join(entry["statuses"])]


def run_cells(row: dict[str, Any]) -> list[str]:
    """One run as table cells."""
    return [row["run"], str(row["seed"]), row["status"], str(row["steps"]), _num(row["best_val_loss"], ".4f"),
            "-" if row["best_step"] is None else str(row["best_step"]), _num(row["val_loss"], ".4f"),
            _num(row["perplexity"], ".2f"), _num(row["tokens_per_sec"], ",.0f"), _num(row["wall_time_s"], ".1f")]


def markdown_tables(rows: Sequence[dict[str, Any]], ablations: Sequence[dict[str, Any]]) -> str:
    """The ablation table, then the run table (the per-seed detail behind each mean)."""
    def table(headers: Sequence[str], body: Iterable[Sequence[str]]) -> str:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
        return "\n".join(lines)

    return (f"## Ablations\n\n{table(TABLE_HEADERS, map(ablation_cells, ablations))}\n\n"
            f"## Runs\n\n{table(RUN_HEADERS, map(run_cells, rows))}\n")


def _html_page(title: str, rows: Sequence[dict[str, Any]], ablations: Sequence[dict[str, Any]],
               plots: dict[str, Path]) -> str:
    def table(headers: Sequence[str], body: Iterable[Sequence[str]]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        lines = ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body]
        return f"<table><tr>{head}</tr>{''.join(lines)}</table>"

    figures = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode("ascii")}"><figcaption>{html.escape(name)}</figcaption>'
        "</figure>" for name, path in plots.items())
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
             "img{max-width:100%}figure{margin:0 0 2em 0}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<h2>Ablations</h2>{table(TABLE_HEADERS, map(ablation_cells, ablations))}"
            f"<h2>Runs</h2>{table(RUN_HEADERS, map(run_cells, rows))}<h2>Plots</h2>{figures}</body></html>\n")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _float(value: Any) -> float:
    return float(value) if _finite(value) else math.nan


def _null_nan(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _num(value: Any, fmt: str) -> str:
    return f"{value:{fmt}}" if _finite(value) else "-"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"
