"""``python -m benchmarks NAME [--quick] [--json FILE]``: run one benchmark, print its JSON object."""

from __future__ import annotations

import argparse
import json
import sys

from benchmarks.common import load_benchmarks


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the named benchmark, print (and optionally save) its result."""
    benchmarks = load_benchmarks()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("name", choices=sorted(benchmarks))
    parser.add_argument("--quick", action="store_true", help="a smaller run that finishes in under a minute")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the result to this file")
    args = parser.parse_args(argv)
    result = benchmarks[args.name](quick=args.quick)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_path:
        with open(args.json_path, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
