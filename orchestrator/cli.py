"""The ``spectral-gpt`` command line: train one ablation, sweep many on Ray Tune, compare and list runs.

Every flag maps onto one field of :class:`orchestrator.settings.RunSettings`; the whole tree is
validated before Ray starts or a file is written, and a user mistake exits with code 2 and one line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from orchestrator.config_file import add_config_argument, driver_runtime_env, parse_args, runtime_env_argument
from orchestrator.settings import MonitoringSettings, RunSettings, ScalingSettings, build_run_settings
from spectral_gpt.config import ABLATION_ALIASES, ABLATIONS, COMPILE_MODES, MODEL_SIZES, PRECISIONS, ConfigError


class OneLineParser(argparse.ArgumentParser):
    """argparse whose mistakes read like a ConfigError: one ``<program>: error:`` line, exit 2.

    argparse's own ``error()`` prints the (long) usage first; a user, a log or ``ray job logs``
    should see the same single line for ``--steps abc`` as for ``--lr -1``. Sub-parsers inherit it.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog.split()[0]}: error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def add_run_arguments(parser: argparse.ArgumentParser, *, steps_default: int) -> None:
    """The flags shared by every command that trains (``train``; sweeps reuse them)."""
    parser.add_argument("--model", default="tiny", choices=list(MODEL_SIZES), help="model size")
    parser.add_argument("--dataset", default="python-docs",
                        help="python-docs (offline default), shakespeare, fineweb-edu, or a path to a text file")
    parser.add_argument("--vocab-size", type=_positive_int, default=None,
                        help="BPE vocabulary size (default: 1024; GPT-2's 50257 for fineweb-edu)")
    parser.add_argument("--steps", type=_positive_int, default=steps_default, help="optimiser steps")
    parser.add_argument("--seed", type=int, default=1337, help="fixes init, data order and dropout")
    parser.add_argument("--batch-size", type=_positive_int, default=None,
                        help="global batch in sequences (default: the model size's)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the ablation's)")
    parser.add_argument("--eval-interval", type=_positive_int, default=None,
                        help="steps between validations (default: min(250, checkpoint interval, steps))")
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                        help="bf16: forward passes under bfloat16 autocast (for GPUs); fp32 (default) is "
                             "bit-reproducible")
    parser.add_argument("--compile", nargs="?", const="default", default=None, choices=list(COMPILE_MODES),
                        metavar="MODE", help="train through torch.compile (fused kernels, mainly for GPUs; the first "
                                             "step compiles for tens of seconds); MODE: "
                                             f"{', '.join(COMPILE_MODES)} (default: default)")
    parser.add_argument("--workers", type=_positive_int, default=1, help="Ray Train workers (DDP)")
    parser.add_argument("--cpus-per-worker", type=_positive_int, default=None, metavar="N",
                        help="CPUs (torch threads) per worker (default for train on this machine: all cores but "
                             "one, shared by the workers; 1 per worker in sweeps and on clusters)")
    device = parser.add_mutually_exclusive_group()
    device.add_argument("--gpu", dest="gpu", action="store_true", help="one GPU per worker (NCCL)")
    device.add_argument("--cpu", dest="gpu", action="store_false", help="CPU workers (gloo), the default")
    parser.add_argument("--output", default="experiments",
                        help="folder that holds run folders; train also takes a storage URI "
                             "(s3://bucket/runs, gs://..., file:///...), which every cluster node reaches")
    parser.add_argument("--resume", default="auto", choices=["auto", "must", "never"],
                        help="auto: continue the unfinished run of this name; must: fail if none; never: new run")
    parser.add_argument("--no-monitoring", action="store_true", help="write no files (quick runs)")
    parser.add_argument("--checkpoint-interval", type=_positive_int, default=1000)
    parser.add_argument("--keep-last", type=_positive_int, default=3, help="checkpoints kept besides the best")
    parser.add_argument("--log-interval", type=_positive_int, default=10)
    parser.add_argument("--viz-interval", type=_positive_int, default=1000)
    parser.add_argument("--max-failures", type=int, default=3, help="worker-group restarts before the run fails")
    parser.add_argument("--runtime-env", type=runtime_env_argument, default=None, metavar="FILE",
                        help="Ray runtime env (JSON or YAML, as for 'ray job submit --runtime-env') this "
                             "driver starts or joins Ray with")
    add_config_argument(parser)


def settings_from_args(args: argparse.Namespace, ablation: str, name: str | None) -> RunSettings:
    """Turn parsed flags into validated settings (raises ConfigError)."""
    overrides: dict[str, Any] = {}
    if args.lr is not None:
        overrides["lr"] = args.lr
    return build_run_settings(
        ablation=ablation, size=args.model, steps=args.steps, seed=args.seed, batch_size=args.batch_size,
        vocab_size=args.vocab_size, dataset=args.dataset, name=name, output=args.output, resume=args.resume,
        eval_interval=args.eval_interval, precision=args.precision, compile_mode=args.compile,
        monitoring=MonitoringSettings(enabled=not args.no_monitoring,
                                      checkpoint_interval=args.checkpoint_interval, keep_last=args.keep_last,
                                      log_interval=args.log_interval, viz_interval=args.viz_interval),
        scaling=ScalingSettings(workers=args.workers, use_gpu=args.gpu, max_failures=args.max_failures,
                                cpus_per_worker=args.cpus_per_worker),
        **overrides)


def build_parser() -> argparse.ArgumentParser:
    """The ``spectral-gpt`` parser with one sub-command per job kind."""
    parser = OneLineParser(prog="spectral-gpt", description=__doc__.splitlines()[0],
                     epilog="With no COMMAND the flags are train's, e.g. spectral-gpt --experiment "
                            "wave_baseline --steps 500; rerunning a command continues its unfinished run "
                            "(--resume auto). See 'spectral-gpt train --help'.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = False
    train = commands.add_parser("train", help="train one ablation on Ray (the default command)")
    train.add_argument("--experiment", default="wave_baseline",
                       choices=[*ABLATIONS, *ABLATION_ALIASES], metavar="ABLATION",
                       help=f"one of: {', '.join(ABLATIONS)}")
    train.add_argument("--name", default=None, help="run name (default: the ablation); letters, digits, . _ -")
    add_run_arguments(train, steps_default=500)
    train.set_defaults(handler=run_train)
    from orchestrator.sweep_cli import register_commands  # it builds on this module's run arguments

    register_commands(commands)
    from orchestrator.benchmark_cmd import register_benchmark

    register_benchmark(commands)
    return parser


def _print_progress(progress: Progress, task: Any, snapshot: dict[str, Any]) -> None:
    parts = [f"loss {snapshot['loss']:.3f}" if "loss" in snapshot else "starting"]
    if "val_loss" in snapshot:
        parts.append(f"val {snapshot['val_loss']:.3f}")
    if "tokens_per_sec" in snapshot:
        parts.append(f"{snapshot['tokens_per_sec']:,.0f} tok/s")
    done = int(snapshot["step"]) + 1 if "loss" in snapshot else int(snapshot.get("step", 0))
    progress.update(task, completed=done, description=" ".join(parts))


def _print_warnings(console: Console, warnings: list[str], printed: list[str]) -> None:
    """Print each run warning (a checkpoint not saved, a corrupt one skipped) once, as one line."""
    for warning in warnings:
        if warning not in printed:
            printed.append(warning)
            console.print(f"[yellow]warning: {escape(warning)}", soft_wrap=True)


def run_train(args: argparse.Namespace, console: Console) -> int:
    """``spectral-gpt train``: returns the process exit code."""
    from orchestrator.run import run_training  # imports ray; kept off the --help path

    settings = settings_from_args(args, args.experiment, args.name)
    columns = (TextColumn("[bold]{task.fields[name]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.description}"), TimeRemainingColumn())
    progress = Progress(*columns, console=console, transient=False)
    tasks: list[Any] = []
    warned: list[str] = []

    def show(snapshot: dict[str, Any]) -> None:
        # The bar starts with the first snapshot, i.e. once the run passed validation and Ray is up,
        # so a mistake (ConfigError) prints only its error line, not a "0/500 starting" bar too.
        if not tasks:
            progress.start()
            tasks.append(progress.add_task("starting", total=settings.spec.train.steps, name=settings.name))
        _print_warnings(console, snapshot.get("warnings", []), warned)
        _print_progress(progress, tasks[0], snapshot)

    try:
        outcome = run_training(settings, on_progress=show)
    finally:
        if tasks:  # stopping a bar that never started still prints a newline before the error line
            progress.stop()
    _print_warnings(console, outcome.warnings, warned)
    metrics = outcome.final_metrics
    where = f" in {outcome.run_dir}" if outcome.run_dir else ""
    if outcome.status != "completed":
        console.print(f"[red]run {settings.name} {outcome.status}{where}: {outcome.error}")
        return 1
    if outcome.start_step:
        console.print(f"resumed from step {outcome.start_step}")
    console.print(f"run {settings.name} completed{where}: {metrics.get('total_steps')} steps, "
                  f"val loss {metrics.get('val_loss'):.4f}, best {metrics.get('best_val_loss'):.4f} "
                  f"at step {metrics.get('best_step')}, {metrics.get('tokens_per_second', 0):,.0f} tok/s")
    return 0


PIPED_WIDTH = 200
"""Columns of output that goes to a file, a pipe or ``ray job logs`` (rich would assume 80): wide
enough that a sweep's table keeps its numbers instead of cutting them to ``6.83…``."""


def make_console() -> Console:
    """The console of every command: the terminal's width, or ``COLUMNS``, or :data:`PIPED_WIDTH`."""
    piped = not sys.stdout.isatty() and not os.environ.get("COLUMNS")
    return Console(width=PIPED_WIDTH if piped else None)


@contextlib.contextmanager
def shutting_down_own_ray() -> Iterator[None]:
    """Shut down, on the way out, the Ray this command started (the private local cluster), with Ctrl-C
    ignored meanwhile: left to Ray's own exit hook, a second Ctrl-C in those 2-3 s interrupted the
    teardown, printed a traceback and left Ray's agents running (~170 MB each) until ``ray stop``."""
    ray = sys.modules.get("ray")
    already_up = ray is not None and ray.is_initialized()
    try:
        yield
    finally:
        ray = sys.modules.get("ray")
        if not already_up and ray is not None and ray.is_initialized():
            in_main = threading.current_thread() is threading.main_thread()
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
            try:
                ray.shutdown()
            finally:
                if in_main:
                    signal.signal(signal.SIGINT, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spectral-gpt`` console script."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["train", *argv]
    args = parse_args(parser, argv)
    console = make_console()
    with shutting_down_own_ray():
        try:
            with driver_runtime_env(getattr(args, "runtime_env", None)):
                return args.handler(args, console)
        except ConfigError as exc:
            parser.exit(2, f"spectral-gpt: error: {exc}\n")
        except KeyboardInterrupt:
            console.print("[yellow]interrupted; run the same command again to continue from the last checkpoint")
            return 130


if __name__ == "__main__":
    sys.exit(main())
