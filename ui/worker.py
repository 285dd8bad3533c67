"""Long work off the GUI thread: one QThread, one worker QObject, messages back.

Why this module exists: a ROME edit, a perplexity probe or an export takes seconds to
minutes. Run on the GUI thread they would freeze the window; run in a thread that lets
an exception escape they would kill the process or leave the window waiting forever.

:class:`Runner` lives on the GUI thread and runs one job at a time. A job is a plain
callable ``fn(report, cancel) -> result``: ``report(obj)`` sends a progress object to the
GUI (``Progress`` events from the engine, export fractions, ...), ``cancel`` is the
:class:`threading.Event` handed to ``Editor.edit(cancel=...)``. The job runs inside a
:class:`_Job` QObject that is created without a parent and then moved to a fresh
:class:`QThread` (a QObject with a parent cannot be moved). Every exception is caught in
that thread and delivered as a one-line message (plus the traceback for the log).

All of :class:`Runner`'s signals are emitted on the GUI thread, so widgets may be touched
from their slots and tests may wait on them with ``qtbot.waitSignal``.

Example::

    runner = Runner(parent=window)
    runner.finished.connect(show_result)
    runner.start("edit", lambda report, cancel: ws.edit(req, progress=report, cancel=cancel))
    ...
    runner.cancel()   # sets the event; the engine stops at its next check
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from contextlib import nullcontext
from typing import Any, Callable

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot

log = logging.getLogger(__name__)

JobFn = Callable[[Callable[[Any], None], threading.Event], Any]
_collector: Any = None


def collect_garbage_on_gui_thread() -> None:
    """Run Python's cyclic garbage collector only on the GUI thread, from a timer.

    The collector runs in whichever thread happens to allocate when a threshold is crossed.
    If that is the worker thread and the garbage holds Qt objects (pyqtgraph items live in
    reference cycles), their C++ destructors run off the GUI thread and Qt crashes
    (seen here: a segfault in ``ViewBox.itemChange`` while the worker imported a module).
    pyqtgraph's ``GarbageCollector`` disables automatic collection and collects from a
    GUI-thread QTimer instead; it is installed once, by the first :class:`Runner`.
    """
    global _collector
    if _collector is None:
        from pyqtgraph.util.garbage_collector import GarbageCollector

        _collector = GarbageCollector(interval=0.5)


def spare_a_core() -> int | None:
    """How many torch threads a job may use: every core this process may run on but one.

    torch's intra-op pool takes every core by default. On a loaded machine the GUI thread then
    has to wait for a core to be scheduled on: ``bench/bench_gui_responsiveness.py`` measured
    event-loop stalls of 100-220 ms on 2 cores at load 9.5 that were scheduling, not the GIL.
    Leaving one core to the GUI costs an edit one core of compute. ``None`` (torch's choice,
    nothing is set) when ``OMP_NUM_THREADS`` is set: the user's choice stands. The
    :class:`Runner` applies it inside each job's thread when it starts a job.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def _is_cancellation(exc: BaseException) -> bool:
    """``auditor.base.EditCancelled`` or a subclass (a cancelled edit, batch, trace, ...)."""
    from auditor.base import EditCancelled

    return isinstance(exc, EditCancelled)


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` - what the status bar and dialogs show."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    name = type(exc).__name__
    return f"{name}: {first}" if first else name


class _Job(QObject):
    """Runs one callable in the worker thread; its signals are emitted from that thread."""

    progress = Signal(object)
    done = Signal(object)
    failed = Signal(str, str)  # one-line message, traceback
    cancelled = Signal()

    def __init__(self, fn: JobFn, cancel: threading.Event, *, no_grad: bool, threads: int | None):
        super().__init__()  # no parent: it is moved to its thread right after construction
        self._fn = fn
        self._cancel = cancel
        self._no_grad = no_grad
        self._threads = threads
        self.ran_in: int | None = None  # threading ident of the thread that ran the job

    @Slot()
    def run(self) -> None:
        self.ran_in = threading.get_ident()
        try:
            import torch

            if self._threads:
                torch.set_num_threads(self._threads)
            # torch.no_grad() is per thread: it has to be entered here, not on the GUI thread.
            with torch.no_grad() if self._no_grad else nullcontext():
                result = self._fn(self.progress.emit, self._cancel)
        except BaseException as exc:  # noqa: BLE001 - nothing may escape a worker thread
            if _is_cancellation(exc) or (self._cancel.is_set() and isinstance(exc, InterruptedError)):
                self.cancelled.emit()
            else:
                tb = traceback.format_exc()
                log.error("worker job failed: %s", tb)
                self.failed.emit(one_line(exc), tb)
        else:
            if self._cancel.is_set() and result is None:
                self.cancelled.emit()
            else:
                self.done.emit(result)
        finally:
            # the thread's event loop ends with the job (its messages are already queued to the GUI
            # thread), so Runner.wait() returns without the GUI thread having to run its slots first
            thread = QThread.currentThread()
            if thread is not None:
                thread.quit()


class Runner(QObject):
    """Starts jobs in a worker thread, one at a time; re-emits their messages on the GUI thread."""

    started = Signal(str)  # job name
    progress = Signal(object)
    finished = Signal(str, object)  # job name, result
    failed = Signal(str, str)  # job name, one-line message
    cancelled = Signal(str)  # job name
    busy_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None, *, threads: int | None = None):
        """``threads``: torch threads per job; ``None``: :func:`spare_a_core` at each job's start."""
        super().__init__(parent)
        collect_garbage_on_gui_thread()
        self._threads = threads
        self._thread: QThread | None = None
        self._job: _Job | None = None
        self._cancel = threading.Event()
        self.name = ""
        self.last_traceback = ""
        self.last_thread: int | None = None  # threading ident the last job ran in
        self.started_at = 0.0

    # ------------------------------------------------------------ public
    @property
    def busy(self) -> bool:
        return self._thread is not None

    def start(self, name: str, fn: JobFn, *, no_grad: bool = False) -> bool:
        """Run ``fn`` in a new worker thread; False (and nothing started) when one is running."""
        if self.busy:
            return False
        self.name = name
        self._cancel = threading.Event()
        threads = self._threads if self._threads is not None else spare_a_core()
        job = _Job(fn, self._cancel, no_grad=no_grad, threads=threads)
        thread = QThread()
        thread.setObjectName(f"edit-auditor-{name}")
        job.moveToThread(thread)
        queued = Qt.ConnectionType.QueuedConnection
        job.progress.connect(self._on_progress, queued)
        job.done.connect(self._on_done, queued)
        job.failed.connect(self._on_failed, queued)
        job.cancelled.connect(self._on_cancelled, queued)
        thread.started.connect(job.run)
        self._thread, self._job = thread, job
        self.started_at = time.perf_counter()
        thread.start()
        self.busy_changed.emit(True)
        self.started.emit(name)
        return True

    def cancel(self) -> None:
        """Ask the running job to stop; it reports ``cancelled`` when it has."""
        self._cancel.set()

    @property
    def cancelling(self) -> bool:
        """A job is running and has been asked to stop."""
        return self.busy and self._cancel.is_set()

    def wait(self, timeout_ms: int = 60_000) -> bool:
        """Block until the worker thread has ended (tests and scripts only: on the GUI thread this
        freezes the window; the window waits for ``busy_changed(False)`` instead)."""
        thread = self._thread
        return True if thread is None else thread.wait(timeout_ms)

    # ------------------------------------------------------------ slots (GUI thread)
    @Slot(object)
    def _on_progress(self, obj: object) -> None:
        if self.busy:
            self.progress.emit(obj)

    @Slot(object)
    def _on_done(self, result: object) -> None:
        name = self._stop()
        self.finished.emit(name, result)

    @Slot(str, str)
    def _on_failed(self, message: str, tb: str) -> None:
        self.last_traceback = tb
        name = self._stop()
        self.failed.emit(name, message)

    @Slot()
    def _on_cancelled(self) -> None:
        name = self._stop()
        self.cancelled.emit(name)

    def _stop(self) -> str:
        thread, job = self._thread, self._job
        self._thread = self._job = None
        self.last_thread = job.ran_in if job is not None else None
        if thread is not None:
            thread.quit()
            thread.wait()  # the job has returned: both objects can now go with their wrappers
        del job
        self.busy_changed.emit(False)
        return self.name
