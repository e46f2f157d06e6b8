"""User-facing errors.

A user's mistake (missing file, bad header, missing STAR column, NaNs, impossible
parameters) raises :class:`InputError`; the CLI prints its one-line message and
exits with status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os


class InputError(Exception):
    """Bad user input, named by file and field.

    Parameters
    ----------
    message : what is wrong, in words a user understands.
    path : the offending file (or None for a plain parameter).
    field : the offending field, column, key or flag (or None).
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None, field: str | None = None):
        self.path = None if path is None else os.fspath(path)
        self.field = field
        self.message = message
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = []
        if self.path is not None:
            where.append(self.path)
        if self.field is not None:
            where.append(f"[{self.field}]")
        prefix = " ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


def require(condition: bool, message: str, path=None, field: str | None = None) -> None:
    """Raise :class:`InputError` unless ``condition`` holds."""
    if not condition:
        raise InputError(message, path, field)
