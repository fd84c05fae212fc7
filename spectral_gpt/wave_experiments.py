"""The seed's ablation command, kept working: ``python spectral_gpt/wave_experiments.py --experiment all``.

A thin entry into the orchestrator: it runs exactly what ``spectral-gpt ablate`` runs (one Ray Tune
grid of monitored runs, restored by running it again). Nothing in ``spectral_gpt`` imports this
file, and it reaches the orchestrator only inside :func:`main`, so the model core never imports Ray.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the ``ablate`` flags and run the sweep; returns the exit code."""
    from orchestrator.sweep_cli import ablate_main

    return ablate_main(sys.argv[1:] if argv is None else argv, prog="wave_experiments.py")


if __name__ == "__main__":
    # Run by path, Python puts spectral_gpt/ itself first on sys.path, so its modules would also be
    # importable as top-level `config`, `data`, `model` here and in every Ray worker (they inherit
    # the driver's path). The checkout root takes that place instead, which also lets the script run
    # from a checkout that was never installed.
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    sys.exit(main())
