"""pyqtgraph charts: the live v* optimisation and the workspace's health across edits.

* :class:`LiveEditChart` takes the engine's ``Progress`` events (phase ``"v"``: loss and
  target probability per step). Points are appended to a buffer and the curves redrawn at most
  every :data:`REDRAW_MS`, never once per signal, so a fast optimiser cannot flood the event loop.
* :class:`PerplexityChart` draws the perplexity after each edit and the collapse threshold
  (the base perplexity times the guard's ratio).
* :class:`DenominatorChart` draws |u . k*| of each edit on a log scale, the collapse band
  (below the guard's threshold) shaded and flagged edits in red.

Clicking a point of either health chart emits ``entry_clicked(entry_id)``.

Every chart redraws through a :class:`ui.refresh.Refresh`: once per burst of changes (a hidden chart
once its state is quiet, or when shown), and not at all when what it shows did not change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyqtgraph as pg
from PySide6.QtCore import QSize, Signal
from PySide6.QtGui import QColor, QFontMetricsF, QPixmapCache
from PySide6.QtWidgets import QGraphicsItem, QScrollArea, QWidget

from .refresh import Refresh

pg.setConfigOptions(antialias=True, background="w", foreground="#333333")

BLUE = "#1f5fae"
ORANGE = "#d9822b"
RED = "#c0392b"
GREY = "#7f8c8d"
REDRAW_MS = 80  # a live chart redraws at most 12 times a second, however fast its points arrive


class IntAxis(pg.AxisItem):
    """An axis of whole numbers (steps, entry ids): no 1.5 ticks."""

    def tickValues(self, minVal, maxVal, size):  # noqa: N802,N803 - pyqtgraph API
        out = []
        for spacing, values in super().tickValues(minVal, maxVal, size):
            if spacing < 1:
                continue
            out.append((spacing, [v for v in values if float(v).is_integer()]))
        if not out:
            lo, hi = int(math.ceil(minVal)), int(math.floor(maxVal))
            out = [(1.0, list(range(lo, hi + 1)))]
        return out


LEFT_AXIS_PX = 48  # the left axis of a live chart, with its label: as wide empty as with values (see cache_axes)
TICKS_AXIS_PX = 40  # a left axis without a label (the Sequence tab's: "1.002", "0.95", "450")
PIXMAP_CACHE_KB = 64 * 1024  # the axes' cached pictures: a gridded axis is as large as its plot (~1 MB)
BOTTOM_AXIS_PX = 38  # a bottom axis with tick values and a label (20 without the label)


def cache_axes(plot: pg.PlotItem, left_width: float | None = None, bottom_height: float | None = None) -> None:
    """Keep each axis's rendered picture between paints (Qt's item cache); ``left_width`` and
    ``bottom_height``: a fixed size for the left and the bottom axis.

    With a grid, an axis covers its whole plot, so every curve update repainted all of a chart's
    axes, replaying their tick labels' text at 3-8 ms an axis (the bulk of the GUI thread's time
    after an edit or a revert, measured with bench/profile_gui_slots.py). Cached, an unchanged axis
    is one blit; it is rendered again only when its range or size changes. An axis sized by its
    tick labels changes size with them (none on an empty chart, then "12.5"), and a new size lays
    out every plot of the chart again: a live chart's axes have a fixed size.
    """
    if QPixmapCache.cacheLimit() < PIXMAP_CACHE_KB:  # Qt's 10 MB holds fewer axes than the window has
        QPixmapCache.setCacheLimit(PIXMAP_CACHE_KB)
    for name in ("left", "bottom", "right", "top"):
        plot.getAxis(name).setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
    if left_width is not None:
        _grow_to_fit(plot.getAxis("left"), left_width)
    if bottom_height is not None:
        plot.getAxis("bottom").setHeight(bottom_height)


def _grow_to_fit(axis: pg.AxisItem, width: float) -> None:
    """A left axis ``width`` wide that widens, once, when its tick labels need more, and never narrows.

    A fixed width keeps a new point from laying the chart out again, but pyqtgraph draws no tick
    label that does not fit its axis: a perplexity ratio between 1.00004 and 1.00012 had an axis
    with no numbers at all. The labels are measured as they are made (``tickStrings``); a wider
    set widens the axis (a layout, then a paint with the labels), and the width stays for any
    later, narrower set.
    """
    axis.setWidth(width)
    strings = axis.tickStrings

    def tick_strings(values, scale, spacing):
        out = strings(values, scale, spacing)
        metrics = QFontMetricsF(axis.style.get("tickFont") or axis.font())
        offset = axis.style["tickTextOffset"][0] + max(0, axis.style["tickLength"])
        label = axis.label.boundingRect().height() * 0.8 if axis.label.isVisible() else 0
        need = math.ceil(max((metrics.horizontalAdvance(t) for t in out), default=0) + offset + label)
        if axis.fixedWidth is not None and need > axis.fixedWidth:
            axis.setWidth(need)
        return out

    axis.tickStrings = tick_strings


class _FitPage(QWidget):
    """A page that asks for no more than its minimum, so its scroll area fits it to the window and
    scrolls only below that minimum (a chart's size hint would otherwise always ask for more)."""

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        return self.minimumSizeHint().expandedTo(self.minimumSize())

    def heightForWidth(self, _width: int) -> int:  # noqa: N802 - Qt API (a word-wrapped label asks for more)
        return self.sizeHint().height()


def chart_page(min_height: int = 0) -> tuple[QScrollArea, QWidget]:
    """A scroll area and the page to lay charts out on: they fit the window, or scroll when it is
    smaller than ``min_height``, instead of being squeezed or cut off."""
    page = _FitPage()
    page.setMinimumHeight(min_height)
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QScrollArea.Shape.NoFrame)
    scroll.setWidget(page)
    return scroll, page


class EmptyNote:
    """What an empty plot will show, written in it, in place of meaningless axes.

    Empty, pyqtgraph draws axes from -0.5 to 0.5 (or "layer (x0.001)" from -400 to 400 after a
    scaled range): numbers that mean nothing. :meth:`set_empty` hides the tick values and the SI
    prefix, fixes the range and shows the note; with data, the axes and autoscaling come back.
    """

    def __init__(self, plot: pg.PlotItem, text: str):
        self.plot = plot
        self.item = pg.TextItem(text, color=GREY, anchor=(0.5, 0.5))
        self.item.setZValue(20)
        plot.addItem(self.item, ignoreBounds=True)
        self.empty: bool | None = None
        self.set_empty(True)

    def set_empty(self, empty: bool) -> None:
        if empty == self.empty and not empty:
            return
        self.empty = empty
        self.item.setVisible(empty)
        for name in ("left", "bottom"):
            axis = self.plot.getAxis(name)
            axis.setStyle(showValues=not empty)
            axis.enableAutoSIPrefix(not empty)
        if empty:
            self.plot.setRange(xRange=(0, 1), yRange=(0, 1), padding=0)
            self.item.setPos(0.5, 0.5)
        else:
            self.plot.enableAutoRange()


def wrapped(text: str, width: int = 34) -> str:
    """A chart title broken into lines of about ``width`` characters (pyqtgraph titles do not wrap,
    and a long one widens its column until the next is cut off)."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "<br>".join(lines)


class LiveEditChart(pg.GraphicsLayoutWidget):
    """Loss and P(new target) of the v* optimisation, one point per step, live."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMinimumHeight(180)
        self.loss_plot = self.addPlot(row=0, col=0, axisItems={"bottom": IntAxis("bottom")})
        self.loss_plot.setTitle("v* optimisation: loss", size="10pt")
        self.loss_plot.setLabel("left", "loss")
        self.loss_plot.showGrid(x=True, y=True, alpha=0.2)
        self.prob_plot = self.addPlot(row=1, col=0, axisItems={"bottom": IntAxis("bottom")})
        self.prob_plot.setTitle("P(new target) over the prefixed prompts", size="10pt")
        self.prob_plot.setLabel("left", "probability")
        self.prob_plot.setLabel("bottom", "step")
        self.prob_plot.setXLink(self.loss_plot)
        self.prob_plot.setYRange(0.0, 1.0, padding=0.02)
        self.prob_plot.showGrid(x=True, y=True, alpha=0.2)
        cache_axes(self.loss_plot, LEFT_AXIS_PX, BOTTOM_AXIS_PX - 18)  # ticks, no label (the x axis is shared)
        cache_axes(self.prob_plot, LEFT_AXIS_PX, BOTTOM_AXIS_PX)
        self.loss_curve = self.loss_plot.plot([], [], pen=pg.mkPen(BLUE, width=2), symbol="o", symbolSize=5,
                                              symbolBrush=BLUE, symbolPen=None)
        self.prob_curve = self.prob_plot.plot([], [], pen=pg.mkPen(ORANGE, width=2), symbol="o", symbolSize=5,
                                              symbolBrush=ORANGE, symbolPen=None)
        self._steps: list[int] = []
        self._loss: list[float] = []
        self._prob: list[float] = []
        self._total: int | None = None  # the optimisation's steps: the x axis spans them from the start
        self._x_range: tuple[float, float] | None = None
        self.empty_notes = [EmptyNote(self.loss_plot, "the v* loss of each step appears here during an edit"),
                            EmptyNote(self.prob_plot, "P(new target) of each step appears here during an edit")]
        self.refresh = Refresh(self, self._redraw, delay_ms=REDRAW_MS)

    @property
    def redraws(self) -> int:
        return self.refresh.redraws

    @property
    def steps(self) -> int:
        """Optimisation steps received since the last :meth:`reset`."""
        return len(self._steps)

    def drawn_points(self) -> int:
        """Points the loss curve currently shows (lags :attr:`steps` by at most one redraw)."""
        x, _ = self.loss_curve.getData()
        return 0 if x is None else len(x)

    def reset(self) -> None:
        self._steps.clear()
        self._loss.clear()
        self._prob.clear()
        self._total = self._x_range = None
        self.refresh.mark()

    def add(self, progress) -> None:
        """Buffer one engine ``Progress`` event; only phase ``"v"`` steps are charted."""
        if getattr(progress, "phase", None) != "v" or getattr(progress, "step", None) is None:
            return
        loss = progress.loss if progress.loss is not None else math.nan
        prob = progress.target_prob if progress.target_prob is not None else math.nan
        if progress.total:
            self._total = max(int(progress.total), self._total or 0)
        self._steps.append(int(progress.step))
        self._loss.append(float(loss))
        self._prob.append(float(prob))
        self.refresh.mark()

    def flush(self) -> None:
        """Redraw now (the end of an edit, a screenshot)."""
        self.refresh.stale = True
        self.refresh.flush()

    def _redraw(self) -> None:
        for note in self.empty_notes:
            note.set_empty(not self._steps)
        self.loss_curve.setData(self._steps, self._loss)
        self.prob_curve.setData(self._steps, self._prob)
        if self._steps and self._total:  # a fixed x axis: not measured and laid out again at every point
            wanted = (min(0, min(self._steps)) - 0.5, max(self._total - 1, max(self._steps)) + 0.5)
            if wanted != self._x_range:
                self._x_range = wanted
                self.loss_plot.setXRange(*wanted, padding=0)


@dataclass
class EditPoint:
    """One ledger entry as the health charts see it."""

    entry_id: int
    ppl_before: float | None
    ppl_after: float | None
    denominator: float | None
    flagged: bool


class _HealthChart(pg.PlotWidget):
    """A scatter of one value per ledger entry; click a point to select its entry."""

    entry_clicked = Signal(int)

    EMPTY = "one point per ledger entry appears here after the first edit"

    def __init__(self, title: str, ylabel: str, parent=None):
        super().__init__(parent, axisItems={"bottom": IntAxis("bottom")})
        self.setMinimumHeight(140)
        self.plot_item = self.getPlotItem()
        self.plot_item.setLabel("left", ylabel)
        self.plot_item.setLabel("bottom", "ledger entry")
        self.plot_item.showGrid(x=True, y=True, alpha=0.2)
        cache_axes(self.plot_item)
        self.line = self.plot([], [], pen=pg.mkPen(GREY, width=1))
        self.points = pg.PlotDataItem([], [], pen=None, symbol="o", symbolSize=9)
        self.points.sigPointsClicked.connect(self._clicked)
        self.addItem(self.points)
        self.selected = pg.PlotDataItem([], [], pen=None, symbol="o", symbolSize=17, symbolBrush=None,
                                        symbolPen=pg.mkPen("#222222", width=2))
        self.addItem(self.selected)
        self._xy: dict[int, float] = {}
        self._selected: int | None = None
        self._title = ""
        self.empty_note = EmptyNote(self.plot_item, self.EMPTY)
        self._shown: tuple | None = None  # the (points, threshold) drawn
        self._wanted: tuple = ((), None)  # the (points, threshold) to draw
        self.refresh = Refresh(self, self._redraw)
        self.set_title(title)

    def set_points(self, points: list[EditPoint], threshold: float | None) -> None:
        """The ledger's edits and the guard's threshold: drawn when seen, and only if they changed."""
        self._wanted = (tuple(points), threshold)
        if self._wanted != self._shown:
            self.refresh.mark()

    def _redraw(self) -> None:
        if self._wanted == self._shown:
            return
        self._shown = self._wanted
        self._draw(list(self._wanted[0]), self._wanted[1])
        self.select(self._selected)

    def _draw(self, points: list[EditPoint], threshold: float | None) -> None:
        raise NotImplementedError

    def set_title(self, html_title: str) -> None:
        if html_title != self._title:  # a new title lays the plot out again: only when it changed
            self._title = html_title
            self.plot_item.setTitle(html_title, size="10pt")

    def _set(self, ids: list[int], values: list[float], flagged: list[bool]) -> None:
        self._xy = dict(zip(ids, values))
        self.empty_note.set_empty(not ids)
        brushes = [pg.mkBrush(RED if f else BLUE) for f in flagged]
        sizes = [13 if f else 9 for f in flagged]
        self.line.setData(ids, values)
        self.points.setData(ids, values, data=ids, symbolBrush=brushes, symbolSize=sizes,
                            symbolPen=[pg.mkPen("w") for _ in ids])
        if ids:  # half an entry of room on each side: the first and last points are not cut by the frame
            self.plot_item.setXRange(min(ids) - 0.5, max(ids) + 0.5, padding=0)

    def select(self, entry_id: int | None) -> None:
        self._selected = entry_id
        if self.refresh.stale:
            return  # drawn with the points
        if entry_id is not None and entry_id in self._xy:
            self.selected.setData([entry_id], [self._xy[entry_id]])
        else:
            self.selected.setData([], [])

    def point_count(self) -> int:
        """Points drawn (the chart is brought up to date first, seen or not)."""
        self.refresh.flush()
        return len(self._xy)

    def _clicked(self, _item, points, *_ev) -> None:
        if len(points):
            self.entry_clicked.emit(int(points[0].data()))


class PerplexityChart(_HealthChart):
    TITLE = "Perplexity after each edit"

    def __init__(self, parent=None):
        super().__init__(self.TITLE, "perplexity", parent)
        self.threshold_line = pg.InfiniteLine(angle=0, movable=False,
                                              pen=pg.mkPen(RED, width=1.5, style=pg.QtCore.Qt.PenStyle.DashLine))
        self.threshold_line.setVisible(False)
        self.addItem(self.threshold_line)
        self.threshold: float | None = None

    def _draw(self, points: list[EditPoint], ratio_max: float | None) -> None:
        usable = [p for p in points if p.ppl_after is not None and math.isfinite(p.ppl_after)]
        self._set([p.entry_id for p in usable], [p.ppl_after for p in usable], [p.flagged for p in usable])
        base = next((p.ppl_before for p in points if p.ppl_before), None)
        self.threshold = base * ratio_max if (base and ratio_max) else None
        self.threshold_line.setVisible(self.threshold is not None)
        if self.threshold is None:
            self.set_title(self.TITLE)
            return
        self.threshold_line.setPos(self.threshold)
        # short enough for the chart's width at 1280x800 (the longer wording was cut off there)
        self.set_title(f"{self.TITLE}<br><span style='color:{RED}; font-size:9pt'>dashed: collapse at "
                       f"{ratio_max:g} × base = {self.threshold:.4g}</span>")

class DenominatorChart(_HealthChart):
    TITLE = "ROME denominator |u·k*| per edit (log scale)"

    def __init__(self, parent=None):
        super().__init__(self.TITLE, "|denominator|", parent)
        self.plot_item.setLogMode(x=False, y=True)
        band = QColor(RED)
        band.setAlpha(40)
        # the band is drawn between two data curves, so the plot's log mode transforms it
        # exactly as it transforms the points
        self.band_low = pg.PlotDataItem([], [], pen=pg.mkPen(None))
        self.band_high = pg.PlotDataItem([], [], pen=pg.mkPen(RED, width=1, style=pg.QtCore.Qt.PenStyle.DashLine))
        self.addItem(self.band_low)
        self.addItem(self.band_high)
        self.band = pg.FillBetweenItem(self.band_low, self.band_high, brush=pg.mkBrush(band))
        self.band.setZValue(-10)
        self.addItem(self.band)
        self.threshold: float | None = None
        self.empty_note.set_empty(True)  # again: log mode and the band items reset the range

    def _draw(self, points: list[EditPoint], denominator_min: float | None) -> None:
        usable = [p for p in points if p.denominator is not None and math.isfinite(p.denominator) and p.denominator != 0]
        ids = [p.entry_id for p in usable]
        self._set(ids, [abs(p.denominator) for p in usable], [p.flagged for p in usable])
        self.threshold = denominator_min or None
        if self.threshold is None or not ids:  # no band over an empty chart: it would shade all of it
            self.band_low.setData([], [])
            self.band_high.setData([], [])
            self.set_title(self.TITLE)
            return
        values = [abs(p.denominator) for p in usable] + [self.threshold]
        low = min(values) / 10.0
        x = [min(ids) - 0.5, max(ids) + 0.5] if ids else [0.5, 1.5]
        self.band_low.setData(x, [low, low])
        self.band_high.setData(x, [self.threshold, self.threshold])
        self.set_title(f"{self.TITLE}<br><span style='color:{RED}; font-size:9pt'>"
                       f"shaded: collapse band, |u·k*| &lt; {self.threshold:g}</span>")
