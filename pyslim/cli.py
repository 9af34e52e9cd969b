"""The ``pyslim`` command line: ``pyslim info`` and ``pyslim bench``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import List, Optional


def _info(args: argparse.Namespace) -> int:
    import pyslim

    info = pyslim.native_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, list):
            value = ", ".join(value)
        print(f"{key:<{width}}  {value}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pyslim", description="pyslim: model compression on native kernels")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="version, ISA paths (built/detected/active), CUDA")
    p_info.add_argument("--json", action="store_true")
    p_info.set_defaults(fn=_info)
    sub.add_parser("bench", help="side-by-side benchmark of pyslim's kernels vs torch ('pyslim bench --help')")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":  # everything after 'bench' belongs to the benchmark's own parser
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
        from pyslim import _bench

        return _bench.main(argv[1:])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
