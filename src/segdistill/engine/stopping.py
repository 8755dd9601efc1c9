"""Stopping a training run cleanly on SIGTERM: what a cluster scheduler sends before it pre-empts a
job or at its time limit (SLURM, Kubernetes), what ``kill`` sends, and what ``torchrun`` forwards to
its workers when it is stopped. The trainer ends the step it is in (and an evaluation or save that
follows it), saves a checkpoint at that step and stops, so a resumed run continues from there
instead of from the last interval checkpoint.
"""

from __future__ import annotations

import atexit
import multiprocessing
import signal
import threading
from types import FrameType

from ..data.transforms import seed_worker

_pending = False  # a SIGTERM arrived after the last check of a finished fit: the next fit stops at once


class StopSignal:
    """While entered (a context manager), a SIGTERM sets ``requested`` instead of ending the process;
    the previous handler comes back on exit (``SIG_DFL`` when it was installed from C). A signal
    that arrived too late for the run it interrupted (after its last step) carries over to the next
    ``StopSignal`` of the process (``bench`` runs several). Outside the main thread, where Python
    cannot install handlers, it does nothing and SIGTERM keeps its usual effect."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: object = None
        self._installed = False

    def __enter__(self) -> StopSignal:
        global _pending
        if threading.current_thread() is threading.main_thread():
            self.requested, _pending = _pending, False
            self._previous = signal.signal(signal.SIGTERM, self._record)
            self._installed = True
        return self

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        global _pending
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False
            _pending = self.requested and exc[0] is None


def worker_ignores_stop_signal(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: the worker ignores SIGTERM. A scheduler signals every process
    of the job, and a worker killed by it would abort the step that the main process finishes before
    it saves. The workers stop when their loader shuts them down, when the main process exits
    (:func:`_kill_worker_processes`) or, if it is killed, when their watchdog sees it gone."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def seeded_worker_ignores_stop_signal(worker_id: int) -> None:
    """The training loaders' ``worker_init_fn``: :func:`worker_ignores_stop_signal`, then
    :func:`~segdistill.data.transforms.seed_worker` (random / NumPy / augmentation seeds)."""
    worker_ignores_stop_signal(worker_id)
    seed_worker(worker_id)


def _kill_worker_processes() -> None:
    """At interpreter exit, SIGKILL the daemonic child processes still alive (DataLoader workers of a
    loader that was never shut down: an uncaught exception keeps its iterator alive, persistent
    workers outlive the run). multiprocessing's own exit handler would SIGTERM and then join them
    without a time limit, which hangs on workers that ignore SIGTERM. Registered at import, after
    multiprocessing's, so it runs first."""
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


atexit.register(_kill_worker_processes)
