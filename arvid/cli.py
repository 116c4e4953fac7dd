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


# Bad input of every kind: one line "arvid <cmd>: error: <msg>" and exit 2. Any other exception is a
# bug and keeps its traceback (that is the bug report). UnicodeDecodeError is a ValueError; the
# commands that read text name the file in their message.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def main(argv: list[str] | None = None) -> int:
    """Run one ``arvid`` command; returns the exit status.

    0 done; 2 bad input (one line on stderr); 130 Ctrl-C; 143 SIGTERM. An interrupted ``generate`` /
    ``interactive`` keeps the playable prefix of its video and says what it holds.
    """
    args = build_parser().parse_args(argv)
    from arvid.runtime.files import Terminated, sigterm_as_interrupt  # after parsing: --help stays light

    try:
        with sigterm_as_interrupt():
            return args.func(args)
    except USER_ERRORS as e:
        print(f"arvid {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"arvid {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return Terminated.exit_code
    except KeyboardInterrupt:
        print(f"arvid {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
