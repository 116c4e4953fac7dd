"""The ``arvid`` command line. It drives every layer, so it sits above them all (never inside runtime/).

Each subcommand lives in its own module under ``arvid/commands/`` with a ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys

# Engines from arvid.export register as chunk executors on import (``--backend ort``, ``ort+int8``).
ENGINE_MODULES = ["arvid.export.executors"]
COMMANDS = ["bench", "generate", "roofline", "report", "interactive", "download", "quantize", "quality", "export"]


def register_engines() -> None:
    for mod in ENGINE_MODULES:
        with contextlib.suppress(ImportError):  # an engine module that is not there registers nothing
            importlib.import_module(mod)


def build_parser() -> argparse.ArgumentParser:
    register_engines()
    parser = argparse.ArgumentParser(prog="arvid", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"arvid.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:  # bad input: a clear message, not a stack trace
        print(f"arvid {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"arvid {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
