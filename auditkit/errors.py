"""Errors the user can fix (exit 2) kept apart from crashes (exit 3).

An :class:`AuditInputError` always renders as one line: ``FILE:PLACE: what is wrong; fix``.
"""
from __future__ import annotations


def dotted(path) -> str:
    """A key path as it reads in a suite: ``("checks", 0, "data")`` -> ``"checks[0].data"``,
    ``("model", "x")`` -> ``"model.x"`` (an int is an index, anything else a key)."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" if i else str(p) for i, p in enumerate(path))


class AuditInputError(Exception):
    """Bad input: a suite, data file, model or argument the user must fix."""

    def __init__(self, message: str, *, file: str | None = None, place: str | int | None = None,
                 fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.place = place
        self.fix = fix

    def line(self) -> str:
        where = ""
        if self.file:
            where = str(self.file)
            if self.place not in (None, ""):
                where += f":{self.place}"
            where += ": "
        text = f"{where}{self.message}"
        if self.fix:
            text += f"; {self.fix}"
        return " ".join(text.split())  # always exactly one line


class TrainingDiverged(RuntimeError):
    """The fine-tuning loss became NaN or infinite."""
