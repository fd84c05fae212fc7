"""``spectral-gpt ablate | compare | ls``: ablation sweeps on Ray Tune, and tables of finished runs.

:func:`register_commands` adds the three sub-commands to the ``spectral-gpt`` parser; each sets
``handler`` to its function ``(args, console) -> exit code``, which raises ConfigError (one line,
exit 2 in the caller) for a user mistake before Ray starts. :func:`ablate_main` runs ``ablate`` on
its own, for the seed's script ``spectral_gpt/wave_experiments.py``.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orchestrator.cli import OneLineParser, add_run_arguments, make_console, settings_from_args, shutting_down_own_ray
from orchestrator.config_file import driver_runtime_env, parse_args
from orchestrator.settings import require_folder
from orchestrator.summary import (
    RUN_HEADERS,
    SWEEP_FILE,
    TABLE_HEADERS,
    Summary,
    ablation_cells,
    discover_runs,
    load_run,
    load_sweep_record,
    run_cells,
    run_row,
    sweep_run_dirs,
    write_summary,
)
from spectral_gpt.config import ABLATION_ALIASES, ABLATIONS, ConfigError

if TYPE_CHECKING:
    from orchestrator.settings import RunSettings
    from orchestrator.sweep import SweepSettings

SWEEP_STEPS_DEFAULT = 10000
"""The seed's ``wave_experiments.py --steps`` default."""


def register_commands(subparsers: Any) -> None:
    """Add ``ablate``, ``compare`` and ``ls`` to ``spectral-gpt``'s sub-command parsers."""
    ablate = subparsers.add_parser("ablate", help="run ablations (x seeds) as one Ray Tune grid of runs",
                                   description="Run ablations as one Ray Tune grid, one monitored run per "
                                               "(ablation, seed). Rerunning the command restores an "
                                               "unfinished sweep: finished runs are kept, the others "
                                               "continue from their last checkpoint.")
    add_ablate_arguments(ablate)
    ablate.set_defaults(handler=run_ablate)
    compare = subparsers.add_parser("compare", help="summary table and plots of finished runs or sweeps")
    compare.add_argument("dirs", nargs="+", metavar="DIR", help="run folders, sweep folders, or folders of them")
    compare.add_argument("--output", default="comparison", help="folder for the summary files and plots")
    compare.set_defaults(handler=run_compare)
    ls = subparsers.add_parser("ls", help="list runs and sweeps with status, step and best val loss")
    ls.add_argument("dir", nargs="?", default="experiments", metavar="DIR", help="folder to list")
    ls.set_defaults(handler=run_ls)


def add_ablate_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``ablate``: the grid, how it runs, then every run flag (shared by all trials)."""
    parser.add_argument("--experiment", nargs="+", default=["all"], metavar="ABLATION",
                        help=f"ablations to run (default: all): {', '.join([*ABLATIONS, *ABLATION_ALIASES])}")
    parser.add_argument("--seeds", type=int, default=1,
                        help="runs per ablation, with seeds --seed, --seed+1, ... (mean and spread in the summary)")
    parser.add_argument("--max-concurrent", type=int, default=None,
                        help="trials running at once (default: as many as the CPUs/GPUs hold at --workers each)")
    parser.add_argument("--scheduler", default="none", choices=["none", "asha"],
                        help="asha stops trials clearly behind on validation loss early; none runs all to the end")
    parser.add_argument("--trial-retries", type=int, default=2,
                        help="times Tune restarts a failed trial; each restart resumes its run")
    parser.add_argument("--name", default="ablations",
                        help="sweep name; the sweep folder is {output}/{name}_{timestamp}_{git}")
    add_run_arguments(parser, steps_default=SWEEP_STEPS_DEFAULT)


def sweep_settings_from_args(args: argparse.Namespace) -> SweepSettings:
    """Validated sweep settings from parsed flags (raises ConfigError); every trial shares the run flags."""
    from orchestrator.sweep import build_sweep_settings  # imports ray; kept off the --help path

    def make_run(ablation: str, seed: int, name: str) -> RunSettings:
        return settings_from_args(argparse.Namespace(**{**vars(args), "seed": seed}), ablation, name)

    if args.no_monitoring:
        raise ConfigError("a sweep needs monitoring (its summary and its restore read every run's files); "
                          "drop --no-monitoring")
    return build_sweep_settings(args.experiment, make_run, seed=args.seed, seeds=args.seeds, name=args.name,
                                output=args.output, max_concurrent=args.max_concurrent,
                                scheduler=args.scheduler, trial_retries=args.trial_retries, resume=args.resume)


def run_ablate(args: argparse.Namespace, console: Console) -> int:
    """``spectral-gpt ablate``: run or restore the grid, print its summary; 0 when every run succeeded."""
    from orchestrator.sweep import run_sweep

    settings = sweep_settings_from_args(args)
    outcome = run_sweep(settings)
    rows = outcome.summary.rows if outcome.summary is not None else []
    if outcome.summary is not None:
        print_summary(console, outcome.summary)
    verb = "restored and finished" if outcome.restored else "finished"
    where = f"; open {outcome.summary.files['html']} for the tables and plots" if outcome.summary else ""
    console.print(f"sweep {settings.name} {verb} in {outcome.sweep_dir}{where}")
    print_errored(console, outcome.errored)
    if outcome.errored:
        console.print("[red]run the same command again to retry the trials that kept failing")
    failed = [r["run"] for r in rows if r["status"] == "failed" and r["run"] not in outcome.errored]
    if failed:
        console.print(f"[red]runs that failed: {', '.join(failed)} (their results.json says why)")
    return 1 if outcome.errored or failed else 0


def print_errored(console: Console, errored: dict[str, str]) -> None:
    """One line per trial Tune gave up on, with its error's own line (the rest is in Tune's error files)."""
    for run, why in errored.items():
        console.print(f"[red]trial {run} kept failing: {escape(why)}", soft_wrap=True)


def folder_argument(what: str, value: str) -> Path:
    """A folder named on the command line, ``~`` expanded; an empty one is a mistake (ConfigError),
    not the working folder that ``Path("")`` would silently be."""
    if not value.strip():
        raise ConfigError(f"{what} {value!r} is empty; name a folder")
    return Path(os.path.expanduser(value))


def run_compare(args: argparse.Namespace, console: Console) -> int:
    """``spectral-gpt compare DIR...``: the sweep summary's table and plots for any runs."""
    dirs = [folder_argument("DIR", d) for d in args.dirs]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise ConfigError(f"no such folder: {', '.join(missing)}")
    out_dir = folder_argument("--output", args.output).absolute()
    require_folder("--output", str(out_dir))
    records = discover_runs(dirs)
    if not records:
        raise ConfigError(f"no runs (folders with config.json) in {', '.join(args.dirs)}")
    summary = write_summary(records, out_dir, title=f"Comparison of {len(records)} runs")
    print_summary(console, summary)
    console.print(f"summary written to {summary.files['html'].parent} (open summary.html)")
    return 0


def run_ls(args: argparse.Namespace, console: Console) -> int:
    """``spectral-gpt ls [DIR]``: one line per run and per sweep (its runs indented below it)."""
    root = folder_argument("DIR", args.dir)
    if not root.is_dir():
        raise ConfigError(f"no such folder: {args.dir}")
    entries = list_entries(root)
    if not entries:
        console.print(f"no runs or sweeps in {root}")
        return 0
    table = Table("name", "kind", "status", "step", "best val loss", box=None)
    for entry in entries:
        table.add_row(("  " * entry["depth"]) + entry["name"], entry["kind"], entry["status"],
                      str(entry["step"]), _loss(entry["best_val_loss"]))
    console.print(table)
    return 0


def list_entries(root: Path) -> list[dict[str, Any]]:
    """Runs and sweeps in ``root`` (or ``root`` itself when it is one), sweeps followed by their runs."""
    is_one = (root / "config.json").is_file() or (root / SWEEP_FILE).is_file()
    candidates = [root] if is_one else sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    entries: list[dict[str, Any]] = []
    for path in candidates:
        record = load_run(path)
        if record is not None:
            entries.append(_run_entry(run_row(record), depth=0))
            continue
        sweep = load_sweep_record(path)
        if not sweep:
            continue
        run_dirs = sweep_run_dirs(path, sweep)
        rows = [run_row(r) for r in (load_run(d) for d in run_dirs) if r is not None]
        done = sum(r["status"] in ("completed", "stopped", "failed") for r in rows)
        losses = [r["best_val_loss"] for r in rows if math.isfinite(r["best_val_loss"])]
        entries.append({"name": path.name, "kind": "sweep", "status": str(sweep.get("status", "unfinished")),
                        "step": f"{done}/{len(run_dirs)} runs",
                        "best_val_loss": min(losses) if losses else None, "depth": 0})
        entries.extend(_run_entry(r, depth=1) for r in rows)
    return entries


def _run_entry(row: dict[str, Any], depth: int) -> dict[str, Any]:
    return {"name": row["run"], "kind": "run", "status": row["status"], "step": row["steps"],
            "best_val_loss": row["best_val_loss"], "depth": depth}


def print_summary(console: Console, summary: Summary) -> None:
    """The ablation table, and the run table when some ablation has several runs."""
    table = Table(*TABLE_HEADERS, title="Ablations")
    for entry in summary.ablations:
        table.add_row(*ablation_cells(entry))
    console.print(table)
    if any(entry["runs"] > 1 for entry in summary.ablations):
        runs = Table(*RUN_HEADERS, title="Runs")
        for row in summary.rows:
            runs.add_row(*run_cells(row))
        console.print(runs)


def _loss(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def ablate_main(argv: Sequence[str] | None = None, prog: str = "wave_experiments.py") -> int:
    """``ablate`` as a program of its own (the seed's script); returns the exit code."""
    return run_script(seed_script_parser(prog), argv, run_ablate, what="sweep",
                      prepare=lambda args: apply_seed_flags(args, visible_gpus=torch.cuda.device_count()))


def run_script(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
               run: Callable[[argparse.Namespace, Console], int], *, what: str,
               prepare: Callable[[argparse.Namespace], argparse.Namespace] | None = None) -> int:
    """A sub-command as a program of its own (the seed's scripts): a mistake is one line and exit 2,
    Ctrl-C says how to continue the ``what``; returns the exit code."""
    args = parse_args(parser, argv)
    if prepare is not None:
        args = prepare(args)
    console = make_console()
    with shutting_down_own_ray():
        try:
            with driver_runtime_env(args.runtime_env):
                return run(args, console)
        except ConfigError as exc:
            parser.exit(2, f"{parser.prog}: error: {exc}\n")
        except KeyboardInterrupt:
            console.print(f"[yellow]interrupted; run the same command again to continue the {what}")
            return 130


def seed_script_parser(prog: str) -> argparse.ArgumentParser:
    """``ablate``'s flags plus the seed script's own ``--dry-run`` and ``--parallel`` (spec 4.4)."""
    parser = OneLineParser(prog=prog, description="Run the ablations as one Ray Tune grid "
                           "(the same as 'spectral-gpt ablate').")
    add_ablate_arguments(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="smoke test: tiny model, 10 steps, batch 4, checkpoints and plots every 5 steps, "
                             "metrics every step")
    parser.add_argument("--parallel", action="store_true",
                        help="each run trains on every visible GPU (one DDP worker per GPU; the seed's DataParallel)")
    return parser


DRY_RUN = {"model": "tiny", "steps": 10, "batch_size": 4, "checkpoint_interval": 5, "log_interval": 1,
           "viz_interval": 5}
"""The seed's ``--dry-run`` (spec 4.4: 10 steps, batch 4, intervals 5/1/5) on our offline tiny setup."""


def apply_seed_flags(args: argparse.Namespace, visible_gpus: int) -> argparse.Namespace:
    """The seed script's own flags as ``ablate`` flags: ``--dry-run`` shrinks the runs, ``--parallel``
    spreads each run over every visible GPU when there is more than one (else it changes nothing)."""
    values = vars(args).copy()
    if values.pop("dry_run"):
        values.update(DRY_RUN)
    if values.pop("parallel") and visible_gpus > 1:
        values.update(workers=visible_gpus, gpu=True)
    return argparse.Namespace(**values)
