"""When a view redraws: once it is seen, at most once per burst, one view per event-loop turn.

Every view that shows the model's state (charts, the audit table) used to redraw inside the slot
that changed the state, hidden or not, and all of them in the same event-loop turn: after a revert
the GUI thread painted every chart and table at once (about 140 ms of its CPU on this machine,
measured with bench/bench_gui_responsiveness.py), and the live charts redrew on every timer tick
during an edit. A :class:`Refresh` gives a view one rule instead:

- :meth:`Refresh.mark` says "the state this view shows has changed". Nothing is drawn yet.
- A view that is not visible (another tab, a collapsed panel, a window not shown) stays *stale*
  while its state keeps changing, and is redrawn once it has been quiet for :data:`QUIET_MS` (no
  mark since), in a turn of its own like any due view: a burst of changes (a sequence's steps, a
  batch) costs it one redraw, and the tab is already drawn when the user switches to it, so the
  click that shows it (Apply switching to the Edit run tab) does not also redraw its charts. If it
  is shown while still stale, it is redrawn in its ``Show`` event, before its first paint: it is
  correct the moment it appears.
- A visible view is redrawn once after ``delay_ms`` (0: the next event-loop turn), however many
  marks arrived meanwhile (a burst of progress events is one redraw).
- Due redraws of several views are drawn one per turn, :data:`STAGGER_MS` apart, so their paints
  fall in separate event-loop turns instead of one long one (:class:`_Turns`).
- A redraw too long for one turn is written as a generator: each ``yield`` ends a piece, and the
  pieces are drawn one per turn like separate views (the Sequence tab's seven plots, one a turn).
  A view being shown, or a :meth:`Refresh.flush`, draws every piece at once.

Layout counts too: a chart resized lays out and draws all its axes again. A word-wrapped label
above or below charts is a :class:`SteadyLabel`, whose height only grows, so a shorter or longer
text ("Applying…", then a summary of six lines) does not resize the charts at every edit.

:meth:`Refresh.flush` redraws now, visible or not (a screenshot, a test reading what is drawn).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator

from PySide6.QtCore import QEvent, QObject, QTimer
from PySide6.QtWidgets import QLabel, QWidget

STAGGER_MS = 15  # between two views' redraws: each view's paint gets an event-loop turn of its own
QUIET_MS = 300  # a hidden view is redrawn this long after the last change of its state


class _Turns(QObject):
    """The queue of views due for a redraw, drawn one per timer tick (GUI thread only)."""

    def __init__(self) -> None:
        super().__init__()
        self.due: list[Refresh] = []
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(0)
        self.timer.timeout.connect(self._next)

    def add(self, refresh: Refresh) -> None:
        if refresh not in self.due:
            self.due.append(refresh)
        if not self.timer.isActive():
            self.timer.start()

    def drop(self, refresh: Refresh) -> None:
        if refresh in self.due:
            self.due.remove(refresh)

    def _next(self) -> None:
        if self.due:
            refresh = self.due.pop(0)
            try:
                refresh.draw_piece()
                again = refresh.pieces is not None
            except RuntimeError:  # its view was deleted (a closed window) while it waited
                again = False
            if again:  # more pieces: after the views already waiting
                self.add(refresh)
        if self.due:
            self.timer.start(STAGGER_MS)


_turns: _Turns | None = None


def _queue() -> _Turns:
    global _turns
    if _turns is None:
        _turns = _Turns()
    return _turns


_all: weakref.WeakSet[Refresh] = weakref.WeakSet()


def pending() -> bool:
    """True while any view has a redraw waiting (due, quiet or in pieces): the window is not yet at
    rest after a state change (the GUI bench waits for rest before a user's next click)."""
    if _turns is not None and _turns.due:
        return True
    for refresh in list(_all):
        try:
            if refresh.timer.isActive() or refresh.quiet.isActive() or refresh.pieces is not None:
                return True
        except RuntimeError:  # deleted with its view
            continue
    return False


class Refresh(QObject):
    """Redraws ``view`` with ``redraw()`` when the state it shows has changed and it can be seen."""

    def __init__(self, view: QWidget, redraw: Callable[[], Iterator[None] | None], *, delay_ms: int = 0):
        super().__init__(view)
        self.view = view
        self._redraw = redraw
        self.pieces: Iterator[None] | None = None  # the rest of a redraw drawn in pieces
        self.stale = False
        self.redraws = 0  # redraws done (tests count them; a burst of marks is one)
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(delay_ms)
        self.timer.timeout.connect(lambda: _queue().add(self))
        self.quiet = QTimer(self)  # a hidden view: restarted by every mark
        self.quiet.setSingleShot(True)
        self.quiet.setInterval(QUIET_MS)
        self.quiet.timeout.connect(lambda: _queue().add(self))
        view.installEventFilter(self)
        _all.add(self)

    def mark(self) -> None:
        """The state changed: redraw soon if the view is seen, else once its state is quiet (or
        when it is shown, whichever comes first)."""
        self.stale = True
        if self.view.isVisible():
            self.quiet.stop()
            if not self.timer.isActive():
                self.timer.start()
        else:
            self.quiet.start()

    def flush(self) -> None:
        """Redraw now if stale (every piece), seen or not."""
        self.timer.stop()
        self.quiet.stop()
        _queue().drop(self)
        self._start()
        while self._piece():
            pass

    def draw_piece(self) -> None:
        """One piece of the redraw (the first, or the next), seen or not: a view is queued when it is
        seen and due, or hidden and quiet."""
        self._start()  # a newer state, if any, replaces the pieces of an older one
        self._piece()

    def _start(self) -> None:
        if self.stale:  # a new redraw: any unfinished one is dropped (it drew an older state)
            self.stale = False
            self.redraws += 1
            out = self._redraw()
            self.pieces = out if isinstance(out, Iterator) else None

    def _piece(self) -> bool:
        """Draw the next piece; False when there is none left."""
        if self.pieces is None:
            return False
        if next(self.pieces, StopIteration) is StopIteration:
            self.pieces = None
            return False
        return True

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt API
        if obj is self.view and event.type() == QEvent.Type.Show and (self.stale or self.pieces is not None):
            self.flush()  # before the first paint: a view is never seen showing an old state
        return False


class SteadyLabel(QLabel):
    """A word-wrapped label whose height only grows (the tallest text it has shown sets it), by a
    line more than it needs when it does: a text one line longer (a revert's "reverted by entry N"
    wrapping) then fits without resizing anything."""

    def __init__(self, text: str = "", parent: QWidget | None = None):
        super().__init__(text, parent)
        self.setWordWrap(True)

    def setText(self, text: str) -> None:  # noqa: N802 - Qt API
        super().setText(text)
        if self.width() > 0:
            need = self.heightForWidth(self.width())
            if need > self.minimumHeight():
                self.setMinimumHeight(need + self.fontMetrics().lineSpacing())
