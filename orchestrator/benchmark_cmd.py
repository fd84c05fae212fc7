"""``spectral-gpt benchmark``: the seed's classic-vs-wave benchmark, on equal footing and honestly validated.

The seed's ``wave_benchmark.py`` trained the classic transformer for 5000 steps and the wave model
with RGD + QFE for 15000, and called one training batch's loss "val_loss" (spec 3.12, B13). Here the
two are the ablations ``standard_transformer`` and ``full_physics``, trained as one 2-trial sweep
(``spectral-gpt ablate``'s grid, so running the same command again restores an unfinished
benchmark) for the same steps on the same batches, and validated on the fixed held-out windows of
the validation split. Each model keeps its ablation's settings (spec 4.2: lr 6e-4 and 1e-3, warmup 500,
QFE lambda 0.1), not the seed benchmark's own constants (3e-4 and 6e-4, warmup 300, lambda 0.05), so
its figures compare with the ablation grid's. The benchmark folder ``{output}/{name}_{timestamp}_{git}``
holds the two run folders, the sweep summary, and the comparison: ``benchmark.md``, ``benchmark.json``
and ``plots/learning_curves.png``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from rich.console import Console
from rich.table import Table

from orchestrator.cli import add_run_arguments
from orchestrator.monitoring import atomic
from orchestrator.summary import RunRecord, load_run, run_row
from orchestrator.summary_plots import write_learning_curves
from orchestrator.sweep_cli import print_errored, run_script, sweep_settings_from_args

if TYPE_CHECKING:
    from orchestrator.sweep import SweepSettings

BENCHMARK_MODELS: dict[str, str] = {"standard_transformer": "Classic Transformer",
                                    "full_physics": "Wave GPT (RGD + QFE)"}
"""The two models the seed's benchmark compares: ablation -> the name the comparison shows."""

BENCHMARK_STEPS_DEFAULT = 2000
"""Steps of each model: a few minutes for the tiny model on a 2-core CPU (the seed: 5000 / 15000 on a GPU)."""

BENCHMARK_INTERVAL = 500
"""The seed's checkpoint and plot interval in benchmarks (spec 5.6)."""

DESCRIPTION = ("Train the classic transformer (standard_transformer) and the Wave GPT with RGD + QFE "
               "(full_physics) for the same steps as one Ray Tune grid, validate both on the held-out split, "
               "and write their comparison. Rerunning the command restores an unfinished benchmark.")
"""What ``spectral-gpt benchmark --help`` and ``wave_benchmark.py --help`` say the command does."""

HEADERS = ("model", "parameters", "steps", "tokens/s", "peak memory (MB)", "best val loss", "best step",
           "final val loss", "val perplexity", "wall time (s)", "status", "run folder")
"""The comparison table's columns, in the Markdown file and on the console."""


def register_benchmark(subparsers: Any) -> None:
    """Add ``benchmark`` to ``spectral-gpt``'s sub-command parsers."""
    parser = subparsers.add_parser(
        "benchmark", help="classic transformer vs Wave GPT + RGD + QFE, equal steps (the seed's benchmark)",
        description=DESCRIPTION)
    add_benchmark_arguments(parser)
    parser.set_defaults(handler=run_benchmark)


def add_benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``benchmark``: how its grid runs, then every run flag (shared by both models)."""
    parser.add_argument("--name", default="benchmark",
                        help="benchmark name; its folder is {output}/{name}_{timestamp}_{git}")
    parser.add_argument("--max-concurrent", type=int, default=None,
                        help="models training at once (default: both when the CPUs/GPUs hold them)")
    parser.add_argument("--trial-retries", type=int, default=2,
                        help="times Tune restarts a failed model; each restart resumes its run")
    add_run_arguments(parser, steps_default=BENCHMARK_STEPS_DEFAULT)
    parser.set_defaults(checkpoint_interval=BENCHMARK_INTERVAL, viz_interval=BENCHMARK_INTERVAL)


def benchmark_settings_from_args(args: argparse.Namespace) -> SweepSettings:
    """The benchmark as a validated 2-trial sweep, one seed, no early-stopping scheduler (raises ConfigError)."""
    grid = {**vars(args), "experiment": list(BENCHMARK_MODELS), "seeds": 1, "scheduler": "none"}
    return sweep_settings_from_args(argparse.Namespace(**grid))


def run_benchmark(args: argparse.Namespace, console: Console) -> int:
    """``spectral-gpt benchmark``: run or restore both models, write and print the comparison.

    Returns 0 when both runs completed, else 1; a user mistake raises ConfigError before Ray starts.
    """
    from orchestrator.sweep import run_sweep  # imports ray; kept off the --help path

    settings = benchmark_settings_from_args(args)
    outcome = run_sweep(settings)
    records = [r for r in (load_run(outcome.sweep_dir / run.name) for run in settings.runs) if r is not None]
    if records:
        benchmark = write_benchmark(records, outcome.sweep_dir)
        print_benchmark(console, benchmark.rows)
        console.print("comparison: " + ", ".join(str(p) for p in benchmark.files.values()))
    verb = "restored and finished" if outcome.restored else "finished"
    console.print(f"benchmark {verb} in {outcome.sweep_dir}")
    print_errored(console, outcome.errored)
    failed = [r.run_dir.name for r in records if r.status != "completed"]
    problems = sorted({*outcome.errored, *failed})
    if problems:
        console.print(f"[red]runs that did not complete: {', '.join(problems)} (their results.json says why); "
                      "run the same command again to retry them")
    return 1 if problems or len(records) < len(settings.runs) else 0


def benchmark_rows(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """One comparison row per run, from the files it wrote (validation = held-out split, never training).

    ``best_val_loss`` is the lowest validation loss the run logged and ``final_val_loss`` its last;
    ``perplexity`` is ``exp(final_val_loss)``; ``peak_memory_mb`` is rank 0's in its last attempt.
    """
    rows = []
    for record in records:
        row = run_row(record)
        rows.append({
            "model": BENCHMARK_MODELS.get(record.ablation, record.ablation), "ablation": record.ablation,
            "parameters": row["params"], "steps": row["steps"], "tokens_per_sec": row["tokens_per_sec"],
            "peak_memory_mb": row["peak_memory_mb"], "best_val_loss": row["best_val_loss"],
            "best_step": row["best_step"], "final_val_loss": row["val_loss"], "perplexity": row["perplexity"],
            "wall_time_s": row["wall_time_s"], "status": row["status"], "run_dir": row["path"],
            "best_checkpoint": record.results.get("best_checkpoint"),
        })
    return rows


@dataclass
class Benchmark:
    """A written comparison: its rows and where each file went."""

    rows: list[dict[str, Any]]
    files: dict[str, Path]
    """``markdown``, ``json`` and ``plot`` (the learning curves)."""


def write_benchmark(records: Sequence[RunRecord], out_dir: Path) -> Benchmark:
    """Write ``benchmark.md``, ``benchmark.json`` and ``plots/learning_curves.png`` into ``out_dir``."""
    rows = benchmark_rows(records)
    plot = write_learning_curves(
        [{"name": r.run_dir.name, "ablation": r.ablation, "seed": r.seed, "rows": r.rows,
          "label": BENCHMARK_MODELS.get(r.ablation, r.ablation)} for r in records],
        out_dir / "plots" / "learning_curves.png")
    setup = _setup(records[0])
    files = {"markdown": out_dir / "benchmark.md", "json": out_dir / "benchmark.json", "plot": plot}
    atomic.write_json_atomic(files["json"], {"setup": setup, "models": [_json_safe(r) for r in rows],
                                             "learning_curves": str(plot)})
    atomic.write_bytes_atomic(files["markdown"], _markdown(rows, setup, out_dir, plot).encode())
    return Benchmark(rows, files)


def _setup(record: RunRecord) -> dict[str, Any]:
    """What both runs share (a sweep refuses runs off equal footing), from the first run's config."""
    config = record.config
    train = config.get("spec", {}).get("train", {})
    scaling = config.get("scaling", {})
    return {"size": config.get("size"), "dataset": config.get("data", {}).get("dataset"),
            "steps": train.get("steps"), "batch_size": train.get("batch_size"), "seed": train.get("seed"),
            "eval_interval": train.get("eval_interval"), "eval_batches": train.get("eval_batches"),
            "workers": scaling.get("workers"), "device": "GPU" if scaling.get("use_gpu") else "CPU",
            "precision": train.get("precision", "fp32"), "compile": train.get("compile")}


def _cells(row: dict[str, Any], run_link: str) -> list[str]:
    return [row["model"], f"{row['parameters']:,}" if isinstance(row["parameters"], int) else "-", str(row["steps"]),
            _num(row["tokens_per_sec"], ",.0f"), _num(row["peak_memory_mb"], ",.0f"),
            _num(row["best_val_loss"], ".4f"), "-" if row["best_step"] is None else str(row["best_step"]),
            _num(row["final_val_loss"], ".4f"), _num(row["perplexity"], ".2f"), _num(row["wall_time_s"], ".1f"),
            row["status"], run_link]


def _markdown(rows: Sequence[dict[str, Any]], setup: dict[str, Any], out_dir: Path, plot: Path) -> str:
    compiled = "" if setup["compile"] is None else f", torch.compile {setup['compile']}"
    lines = [f"# Benchmark: {' vs '.join(r['model'] for r in rows)}", "",
             f"Model size `{setup['size']}`, {setup['steps']} steps each (equal budgets), batch "
             f"{setup['batch_size']}, dataset `{setup['dataset']}`, seed {setup['seed']}, {setup['workers']} "
             f"{setup['device']} worker(s), {setup['precision']}{compiled}. Validation loss is the mean "
             f"cross-entropy over {setup['eval_batches']} fixed held-out batches of the validation split, every "
             f"{setup['eval_interval']} steps; never a training batch.", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" for _ in HEADERS) + "|"]
    for row in rows:
        folder = Path(row["run_dir"]).name
        lines.append("| " + " | ".join(_cells(row, f"[{folder}/]({folder}/)")) + " |")
    lines += ["", f"![learning curves]({plot.relative_to(out_dir)})", "", "Run folders:", ""]
    for row in rows:
        best = Path(row["best_checkpoint"]) if row["best_checkpoint"] else None
        shown = best.relative_to(out_dir) if best and best.is_relative_to(out_dir) else best
        where = f"; best checkpoint `{shown}`" if best else ""
        lines.append(f"- {row['model']} (`{row['ablation']}`): `{row['run_dir']}`{where}")
    return "\n".join(lines) + "\n"


def print_benchmark(console: Console, rows: Sequence[dict[str, Any]]) -> None:
    """The comparison table on the console."""
    table = Table(*HEADERS, title="Benchmark")
    for row in rows:
        table.add_row(*_cells(row, Path(row["run_dir"]).name))
    console.print(table)


def _num(value: Any, fmt: str) -> str:
    return f"{value:{fmt}}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def _json_safe(row: dict[str, Any]) -> dict[str, Any]:
    """NaN (a value a run never logged) as null, so ``benchmark.json`` is strict JSON."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


class _ScriptParser(argparse.ArgumentParser):
    """argparse whose mistakes are one line and exit 2, like ``spectral-gpt``'s, under the script's name."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def benchmark_main(argv: Sequence[str] | None = None, prog: str = "wave_benchmark.py") -> int:
    """``benchmark`` as a program of its own (the seed's script); returns the exit code."""
    parser = _ScriptParser(prog=prog, description=f"{DESCRIPTION} The same as 'spectral-gpt benchmark'.")
    add_benchmark_arguments(parser)
    return run_script(parser, argv, run_benchmark, what="benchmark")
