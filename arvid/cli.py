"""The ``arvid`` command line. It drives every layer, so it sits above them all (never inside runtime/).

Each subcommand lives in its own module under ``arvid/commands/`` with a ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ["bench", "generate", "roofline", "report", "interactive", "download", "quantize", "quality", "export"]


def build_parser() -> argparse.ArgumentParser:
    import arvid.export  # noqa: F401  engines (ort, aoti) register as chunk executors on import

    parser = argparse.ArgumentParser(prog="arvid", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"arvid.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:  # bad input: a clear message, not a stack trace
        print(f"arvid {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"arvid {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
