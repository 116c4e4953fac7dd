"""The ``arvid`` command line. It drives every layer, so it sits above them all (never inside runtime/).

Each subcommand lives in its own module under ``arvid/commands/`` with a ``register(subparsers)``.
Building the parser imports no torch and no ``arvid`` layer (``arvid --help`` / ``--version`` stay
fast); a command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from arvid import __version__

COMMANDS = [
    "bench", "generate", "roofline", "report", "interactive", "download", "quantize", "quality", "export", "serve",
]  # fmt: skip

DESCRIPTION = """\
arvid: streaming autoregressive video diffusion (LongLive, Self-Forcing) on a causal Wan2.1 DiT.
Benchmark the eager baseline against faster backends, generate videos with prompt switches,
quantize to INT8 / FP8 and measure the quality loss, and export ONNX / TensorRT / AOTInductor.
The `tiny` preset runs on a CPU with random weights, no downloads needed."""

EPILOG = """\
examples:
  arvid bench --preset tiny                      eager baseline vs the default backend
  arvid generate --preset tiny --out video.mp4   a (tiny, random-weight) video
  arvid download                                 Wan2.1-T2V-1.3B + LongLive-1.3B weights into checkpoints/
  arvid COMMAND --help                           the options of one command

Optional parts install as extras: pip install 'arvid[video]' (text encoder, VAE, mp4), 'arvid[plots]',
'arvid[hub]' (download), 'arvid[quant]', 'arvid[modelopt]', 'arvid[export]', 'arvid[triton]', 'arvid[serve]',
'arvid[all]'."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arvid",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"arvid {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"arvid.commands.{name}").register(sub)
    return parser


# Bad input of every kind: one line "arvid <cmd>: error: <msg>" and exit 2. Any other exception is a
# bug and keeps its traceback (that is the bug report). UnicodeDecodeError is a ValueError; the
# commands that read text name the file and line (runtime.files.read_text). Every OSError of a file
# (read-only, full disk, not a directory, not found, permission) is the user's machine, not a bug:
# one line naming the path (runtime.files.describe_os_error).
USER_ERRORS = (ValueError, OSError)


def user_error_line(e: BaseException) -> str | None:
    """The one line to print for a user error, or None for a bug (which keeps its traceback)."""
    from arvid.runtime.files import FILE_SYSTEM_ERRNOS, describe_os_error

    if isinstance(e, ValueError):
        return str(e)
    if isinstance(e, OSError):
        # An errno without a path outside the file system's (a socket's, say) is no file of the user's.
        if e.errno is not None and e.filename is None and e.errno not in FILE_SYSTEM_ERRNOS:
            return None
        return describe_os_error(e)
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one ``arvid`` command; returns the exit status.

    0 done; 2 bad input (one line on stderr); 130 Ctrl-C; 143 SIGTERM. An interrupted ``generate`` /
    ``interactive`` keeps the playable prefix of its video and says what it holds.
    """
    args = build_parser().parse_args(argv)
    # engines (ort, trt, aoti) are registered by name in arvid.runtime.executors and imported on first
    # use: a run of an attention backend never imports arvid.export
    from arvid.runtime.files import Terminated, sigterm_as_interrupt  # after parsing: --help stays light

    try:
        with sigterm_as_interrupt():
            return args.func(args)
    except USER_ERRORS as e:
        line = user_error_line(e)
        if line is None:
            raise
        print(f"arvid {args.command}: error: {line}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"arvid {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return Terminated.exit_code
    except KeyboardInterrupt:
        print(f"arvid {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
