"""Error classes and the exit codes the CLI maps them to.

Exit codes: 0 success, 1 internal error (a bug: please report), 2 user error (bad input or
usage; the message says what to fix), 3 verification failed (the candidate does not match the
hooked reference within budget).
"""

from typing import Any

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USER = 2
EXIT_VERIFY = 3


class BakeError(Exception):
    """A problem with the user's input or environment; the message names it and the fix."""

    exit_code = EXIT_USER


class GateFileError(BakeError):
    """The gate variant folder or gate file is missing, unreadable or of the wrong shape."""


class BaseModelError(BakeError):
    """The base model folder is missing files, is not Qwen3, or has a damaged checkpoint."""


class CutError(BakeError):
    """The threshold / off-fraction / preset does not describe a valid cut."""


class OutputError(BakeError):
    """The output folder cannot be written as asked."""


class ExportError(BakeError):
    """An ONNX export folder is missing files or does not match its description."""


class ManifestMismatch(BakeError):
    """A baked folder's manifest does not match the gates or base given on the command line."""


class PlotError(BakeError):
    """A figure cannot be written as asked (file type, folder, or the [plot] extra not installed)."""


class EvalDataError(BakeError):
    """An evaluation set (JSONL) is missing, malformed or empty; the message names the file and the line."""


class HubError(BakeError):
    """A Hub repo could not be resolved or uploaded (offline, not cached, no token, ...)."""


class VerificationFailed(Exception):
    """A candidate model does not reproduce the hooked reference within its budget (``report``: the verifier's)."""

    exit_code = EXIT_VERIFY

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.report = report
