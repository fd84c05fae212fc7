"""``python -m benchmarks NAME [--quick] [--size SIZE] [--json FILE]``: run one benchmark, print its JSON object."""

from __future__ import annotations

import argparse
import inspect
import json
import sys

from benchmarks.common import load_benchmarks
from spectral_gpt.config import MODEL_SIZES


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the named benchmark, print (and optionally save) its result."""
    benchmarks = load_benchmarks()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("name", choices=sorted(benchmarks))
    parser.add_argument("--quick", action="store_true", help="a smaller run that finishes in under a minute")
    parser.add_argument("--size", choices=list(MODEL_SIZES), default=None,
                        help="model size of the model-speed benchmarks (default: tiny with --quick, else small)")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the result to this file")
    args = parser.parse_args(argv)
    sized = sorted(name for name, fn in benchmarks.items() if "size" in inspect.signature(fn).parameters)
    if args.size is not None and args.name not in sized:
        parser.error(f"--size applies to {', '.join(sized)}, not to {args.name}")
    options = {"size": args.size} if args.size is not None else {}
    result = benchmarks[args.name](quick=args.quick, **options)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_path:
        with open(args.json_path, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
