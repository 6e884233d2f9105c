"""Errors a user can act on.

Every failure caused by the user's input is raised as :class:`InputError` with the
file it concerns and a hint that says what to do. The CLI prints ``str(error)`` on one
line; the GUI shows ``message`` and ``hint`` in a dialog with ``details`` expandable.
"""

from __future__ import annotations

from pathlib import Path


class QuantStudioError(Exception):
    """Base class of every error QuantStudio raises on purpose."""


class InputError(QuantStudioError):
    """Bad input: a file, a shape, an option. Carries what to do about it."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        hint: str = "",
        details: str = "",
    ) -> None:
        self.message = message
        self.path = Path(path) if path is not None else None
        self.hint = hint
        self.details = details
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = f"{self.path}: " if self.path is not None else ""
        hint = f" {self.hint}" if self.hint else ""
        # Only the sentence end is tidied: a message that already ends in "." must not get a
        # second one, but ".." inside a path or a message ("../models") is the user's text.
        message = self.message[:-1] if self.message.endswith(".") else self.message
        return f"{where}{message}.{hint}"


class TrustRequired(InputError):
    """The file is a whole pickled model; loading it would run code from the file."""


class Cancelled(QuantStudioError):
    """The user cancelled the running job."""
