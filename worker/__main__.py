"""`python -m worker <command>`: one CLI, sub-commands found in worker/cli/."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import worker.cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(worker.cli.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"worker.cli.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
