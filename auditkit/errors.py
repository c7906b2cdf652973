"""Errors the user can fix (exit 2) kept apart from crashes (exit 3).

An :class:`AuditInputError` always renders as one line: ``FILE:PLACE: what is wrong; fix``, with any
control or bidi character from the input shown as ``\\x1b``/``\\u202e`` rather than sent to the terminal.
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
        from auditkit.report.common import visible
        # always exactly one line, shown literally: an ESC or a bidi override from a file is written out
        return visible(" ".join(text.split()))


class TrainingDiverged(RuntimeError):
    """The fine-tuning loss became NaN or infinite."""
