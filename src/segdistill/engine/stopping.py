"""Stopping a training run cleanly on SIGTERM: what a cluster scheduler sends before it pre-empts a
job or at its time limit (SLURM, Kubernetes), what ``kill`` sends, and what ``torchrun`` forwards to
its workers when it is stopped. The trainer finishes the step it is in, saves a checkpoint at that
step and stops, so ``--resume`` continues from there instead of from the last interval checkpoint.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from ..data.transforms import seed_worker


class StopSignal:
    """While entered (a context manager), a SIGTERM sets ``requested`` instead of ending the process;
    the previous handler comes back on exit. Outside the main thread (where Python cannot install
    handlers) it does nothing and SIGTERM keeps its usual effect."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: object = None
        self._installed = False

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._record)
            self._installed = True
        return self

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False


def worker_ignores_stop_signal(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: the worker ignores SIGTERM. A scheduler signals every process of the job, and a
    worker killed by it would abort the step that the main process finishes before it saves; the
    workers stop when the main process shuts its loaders down (or, at the latest, when it exits)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def seeded_worker_ignores_stop_signal(worker_id: int) -> None:
    """The training loaders' ``worker_init_fn``: :func:`worker_ignores_stop_signal`, then
    :func:`~segdistill.data.transforms.seed_worker` (random / NumPy / augmentation seeds)."""
    worker_ignores_stop_signal(worker_id)
    seed_worker(worker_id)
