"""The one error type a user sees: a bad input, reported as one line."""

from __future__ import annotations


class InputError(Exception):
    """An input that framevet cannot analyse; ``str()`` is the user-facing line."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: error: {reason}")
        self.path = path
        self.reason = reason
