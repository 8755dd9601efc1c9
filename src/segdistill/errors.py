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


class TrainingStopped(Exception):
    """Training stopped on SIGTERM (a scheduler's pre-emption or time limit, ``kill``, ``torchrun``
    shutting down) after saving a checkpoint at the step it had reached; ``--resume`` continues
    exactly. The CLI prints one line and exits with status 143 (128 + SIGTERM), as a process ended
    by that signal does."""
