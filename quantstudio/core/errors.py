"""Errors a user can act on.

Every failure caused by the user's input is raised as :class:`InputError` with the
file it concerns and a hint that says what to do. The CLI prints ``str(error)`` on one
line; the GUI shows ``message`` and ``app_hint`` (or ``hint``) in a dialog with
``details`` expandable. Front ends decide what to do from ``kind``, never from the words.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path


class ErrorKind(str, Enum):
    """What kind of answer gets a user past an error (the GUI switches on this)."""

    BAD_INPUT = "bad_input"  # fix or choose another file / option
    NEEDS_INPUT_SHAPE = "needs_input_shape"  # the input shape is unknown or does not fit: ask for one
    NEEDS_ARCHITECTURE = "needs_architecture"  # a state_dict's architecture is unknown or wrong: ask for it
    NEEDS_TRUST = "needs_trust"  # a whole pickled model: loading runs code, ask for consent
    NOT_TRACEABLE = "not_traceable"  # the model cannot be traced for this engine / export


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
        kind: ErrorKind = ErrorKind.BAD_INPUT,
        app_hint: str = "",
    ) -> None:
        self.message = message
        self.path = Path(path) if path is not None else None
        self.hint = hint  # names command-line options where they help (--input-shape)
        self.app_hint = app_hint  # the same advice in the app's words, where they differ
        self.details = details
        self.kind = ErrorKind(kind)
        super().__init__(self.one_line())

    def hint_for_app(self) -> str:
        return self.app_hint or self.hint

    def one_line(self) -> str:
        where = f"{self.path}: " if self.path is not None else ""
        hint = f" {self.hint}" if self.hint else ""
        # Only the sentence end is tidied: a message that already ends in "." must not get a
        # second one, but ".." inside a path or a message ("../models") is the user's text.
        message = self.message[:-1] if self.message.endswith(".") else self.message
        return f"{where}{message}.{hint}"


class TrustRequired(InputError):
    """The file is a whole pickled model; loading it would run code from the file."""

    def __init__(self, message: str, **kw) -> None:
        kw.setdefault("kind", ErrorKind.NEEDS_TRUST)
        super().__init__(message, **kw)


class Cancelled(QuantStudioError):
    """The user cancelled the running job."""
