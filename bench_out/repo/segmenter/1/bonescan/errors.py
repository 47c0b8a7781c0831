"""Errors a user can act on. Their messages name a file or field and the problem, never content
(report text is patient data)."""

from __future__ import annotations


class BonescanError(Exception):
    """An error with a message meant for the person running the command."""


def user_error_message(e: BaseException) -> str | None:
    """The one-line message to print for an expected error, or None for a bug (show the traceback)."""
    if isinstance(e, BonescanError):
        return str(e)
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return f"{e.filename}: {e.strerror}"
    return None


#: The library's messages name its arguments; the command line prints the flags that set them
#: (one table, so a message is written once).
CLI_WORDING = {
    "pixel_spacing=(row, col)": "--pixel-spacing ROW COL",
    "allow_unusual_spacing=True": "--allow-unusual-spacing",
    "report_encoding=": "--report-encoding",
    "overwrite=True": "--overwrite",
    "stem=": "--stem",
}


def cli_wording(message: str) -> str:
    """A library message as the command line says it (arguments -> flags)."""
    for lib, flag in CLI_WORDING.items():
        message = message.replace(lib, flag)
    return message
