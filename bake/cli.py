"""``lambda-bake``: the command line. Each subcommand lives in its own module with a ``register``.

Only the module of the command being run is imported (``bake.commands.COMMANDS``): a bake never
loads the ONNX exporter, the verifier's torch and transformers, or the Hub client.

Exit codes: 0 success, 1 internal error, 2 user error (bad input; the message says the fix),
3 verification failed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from bake import __version__
from bake.commands import COMMANDS
from bake.commands.output import set_quiet
from bake.errors import EXIT_INTERNAL, EXIT_USER, BakeError, VerificationFailed


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, only that command's module is imported (the others are listed)."""
    parser = argparse.ArgumentParser(
        prog="lambda-bake",
        description=(
            "Fold learned per-neuron lambda gates into a plain Qwen3 checkpoint (and ONNX), "
            "verify it against the hooked model, and publish it."
        ),
        epilog="Exit codes: 0 success, 1 internal error, 2 user error, 3 verification failed.",
    )
    parser.add_argument("--version", action="version", version=f"lambda-bake {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the full traceback of an internal error (or set {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cmd in COMMANDS.items():
        if command in COMMANDS and name != command:
            sub.add_parser(name, help=cmd.help)  # listed in --help; its module is not loaded
        else:
            importlib.import_module(cmd.module).register(sub)
    return parser


def command_in(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the first argument that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def _silence_library_progress() -> None:
    """--quiet also mutes huggingface_hub's and transformers' own progress bars. Both read this switch
    when they are first imported, so neither is imported here; one already loaded is told directly."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"terminated by signal {signum}")


DEBUG_ENV = "LAMBDA_BAKE_DEBUG"


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _raise_on_sigterm)  # let atomic writers clean up on `kill`
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(command_in(argv)).parse_args(argv)
    set_quiet(getattr(args, "quiet", False))
    if getattr(args, "quiet", False):
        _silence_library_progress()
    try:
        return int(args.func(args) or 0)
    except BakeError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except VerificationFailed as e:
        print(f"verification failed: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: no output was written", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno == 28:
            print(f"error: disk full while writing ({e}); nothing was left behind. Free space and rerun.",
                  file=sys.stderr)
            return EXIT_USER
        return _internal_error(e, args)
    except Exception as e:  # noqa: BLE001 - a bug of ours still gets an answer, not a bare traceback
        return _internal_error(e, args)


def _internal_error(e: BaseException, args: argparse.Namespace) -> int:
    """One line for an unexpected exception (a bug: input problems are BakeErrors), or the traceback with --debug."""
    if getattr(args, "debug", False) or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        raise e
    first = str(e).splitlines()[0][:300] if str(e) else ""
    print(f"internal error (a bug in lambda-bake {__version__}, not in your input): {type(e).__name__}"
          f"{': ' + first if first else ''}. Rerun with `lambda-bake --debug {args.command} ...` (or {DEBUG_ENV}=1) "
          "for the full traceback, and please report it.", file=sys.stderr)
    return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
