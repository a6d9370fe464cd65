"""What the commands print: progress and summaries for a person on stderr (muted by --quiet), results on
stderr even with --quiet, and JSON reports on stdout; ``--json`` and ``--quiet`` themselves."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from bake.io.json_files import finite

_QUIET = {"on": False}  # set once per command by bake.cli.main from --quiet


def set_quiet(quiet: bool) -> None:
    """--quiet mutes progress and summaries (``say``); results (``show``), warnings and errors still appear."""
    _QUIET["on"] = quiet


def say(msg: str) -> None:
    """Progress and summaries, for a person: stderr (stdout stays clean for --json); muted by --quiet."""
    if not _QUIET["on"]:
        print(msg, file=sys.stderr)


def show(msg: str) -> None:
    """A result a person asked for (inspect's report, a sweep's failures): stderr, even with --quiet."""
    print(msg, file=sys.stderr)


def emit_json(report: dict[str, Any]) -> None:
    """Print a machine-readable report on stdout (progress and messages go to stderr): strict JSON, a number that is
    not finite written as null (the report's own fields say why: ``nll_note``, ``perplexity_note``)."""
    json.dump(finite(report), sys.stdout, indent=2, default=str, allow_nan=False)
    sys.stdout.write("\n")


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a machine-readable JSON report on stdout")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars or summaries; errors and warnings still go to stderr")
