"""Exceptions shared across the package."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (files, config, arguments).

    The CLI prints ``error: <message>`` (one line) and exits with status 2, so the message must be a
    single line that names the offending file, value or option.
    """


class LossNotFinite(UserError):
    """Training stopped on a non-finite loss (``train.nonfinite: stop``, or too many skipped batches).

    ``step``: the step that produced it (1-based); ``terms``: the loss terms that were not finite. The
    bench records such a run as diverged instead of stopping the whole comparison."""

    def __init__(self, message: str, step: int, terms: list[str]) -> None:
        super().__init__(message)
        self.step = step
        self.terms = list(terms)
