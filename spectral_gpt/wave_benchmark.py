"""The seed's benchmark command, kept working: ``python spectral_gpt/wave_benchmark.py``.

A thin entry into the orchestrator: it runs exactly what ``spectral-gpt benchmark`` runs (the classic
transformer against the Wave GPT with RGD + QFE, equal steps, validated on the held-out split, as
one Ray Tune grid restored by running it again). Nothing in ``spectral_gpt`` imports this file, and
it reaches the orchestrator only inside :func:`main`, so the model core never imports Ray.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the ``benchmark`` flags and run the benchmark; returns the exit code."""
    from orchestrator.benchmark_cmd import benchmark_main

    return benchmark_main(sys.argv[1:] if argv is None else argv, prog="wave_benchmark.py")


if __name__ == "__main__":
    # Run by path, Python puts spectral_gpt/ itself first on sys.path, so its modules would also be
    # importable as top-level `config`, `data`, `model` here and in every Ray worker (they inherit
    # the driver's path). The checkout root takes that place instead, which also lets the script run
    # from a checkout that was never installed.
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    sys.exit(main())
