"""Thread plumbing for short background jobs (decoding a volume, meshing, loading a run).

`LatestOnly` runs at most one job at a time; a job submitted while another runs replaces any job still waiting,
and results of superseded jobs are dropped, so a newer click always wins and clicks never pile up threads.
Results are delivered to callbacks on the GUI thread (napari's `create_worker` signals); the job functions
themselves must not touch Qt objects. An exception in a job becomes a napari error notification (its message).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, QThread, QThreadPool, Signal

POOL_HEADROOM = 8


def ensure_pool_headroom(extra: int = POOL_HEADROOM) -> None:
    """Give Qt's global thread pool room beyond our long-running workers.

    napari/superqt workers run in `QThreadPool.globalInstance()`, whose default size is the core count (2 here).
    Qt itself uses the same pool to convert images while compositing a window (QImage::convertTo splits the work
    into pool tasks and waits for them on the GUI thread, holding the GIL). With the pool filled by a training worker
    and an analysis worker, those tasks never started and the GUI thread waited forever: a deadlock seen here
    under Xvfb. Keeping free slots makes that impossible as long as fewer than `extra` workers run at once.
    """
    pool = QThreadPool.globalInstance()
    want = QThread.idealThreadCount() + int(extra)
    if pool.maxThreadCount() < want:
        pool.setMaxThreadCount(want)


@dataclass
class _Job:
    gen: int
    fn: Callable[..., Any]
    args: tuple
    on_result: Callable[[Any], None]
    on_error: Callable[[BaseException], None] | None


def qt_deleted(obj: QObject) -> bool:
    """True when the C++ side of a Qt object is gone (its Python wrapper then raises RuntimeError on any call)."""
    try:
        obj.objectName()
        return False
    except RuntimeError:
        return True


class LatestOnly(QObject):
    busy_changed = Signal(bool)
    delivered = Signal(int)  # generation of the job whose result was applied

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        ensure_pool_headroom()
        self._gen = 0
        self._running: _Job | None = None
        self._pending: _Job | None = None
        self._worker = None
        self.dropped = 0  # results discarded because a newer job was submitted

    @property
    def busy(self) -> bool:
        return self._running is not None

    def submit(self, fn: Callable[..., Any], *args: Any, on_result: Callable[[Any], None],
               on_error: Callable[[BaseException], None] | None = None) -> int:
        """Queue `fn(*args)` on a worker thread; return its generation number."""
        self._gen += 1
        job = _Job(self._gen, fn, args, on_result, on_error)
        if self._running is None:
            self._start(job)
        else:
            if self._pending is not None:
                self.dropped += 1
            self._pending = job
        return job.gen

    def _start(self, job: _Job) -> None:
        self._running = job
        self.busy_changed.emit(True)
        # napari's workers relay exceptions to its notification manager (the user sees the message); we only
        # route them to the job's own error callback for local status updates.
        worker = create_worker(job.fn, *job.args, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda res, j=job: self._returned(j, res))
        worker.errored.connect(lambda exc, j=job: self._errored(j, exc))
        worker.finished.connect(self._next)
        self._worker = worker
        worker.start()

    def _returned(self, job: _Job, result: Any) -> None:
        if qt_deleted(self):
            return  # the owning widget (our Qt parent) was closed while the job ran: nobody to deliver to
        if job.gen != self._gen:
            self.dropped += 1
            return
        job.on_result(result)
        self.delivered.emit(job.gen)

    def _errored(self, job: _Job, exc: BaseException) -> None:
        if qt_deleted(self) or job.gen != self._gen:
            return
        if job.on_error is not None:
            job.on_error(exc)

    def _next(self) -> None:
        if qt_deleted(self):
            return
        self._running = None
        self._worker = None
        job, self._pending = self._pending, None
        if job is not None:
            self._start(job)
        else:
            self.busy_changed.emit(False)
