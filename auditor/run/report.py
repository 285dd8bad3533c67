"""The capacity report: how many edits until the model's health gives way, as one HTML file.

Input: the sequence runs recorded in workspaces (every applied edit's entry carries its monitor
figures in ``metrics.monitor``, with the run's id; a rolled-back step's revert entries name the
run and the reason in their note) and/or the JSON lines of ``edit-auditor sequence --out``.
Output: one self-contained HTML file (readable offline: no scripts, no links) with, for every
monitored figure, a PNG plot (matplotlib, Agg backend, embedded as base64) of the figure against
the number of edits, one line per run (labelled by method and key mode), its threshold as a
dashed line and the edit at which each run first crossed it marked; then a table of each run's
final figures and of the edit at which each threshold was first crossed; then "Who else changed,
per entry" (issue 18): every applied entry's spill rate, preservation cost and moved subjects from
its collateral audit (a dash when it was not audited) and the run's cumulative spill over its
watch bank after that step, with the watched swaps moved so far.

The figures are the monitor's (monitor.py): Yang et al. 2024 (arXiv 2402.09656) for perplexity
as the collapse signal, Gupta et al. 2024 (arXiv 2401.07453) for retention and norm growth.

Example::

    runs = load_runs(workspaces=["ws/"], jsonl=["memit.jsonl"])
    write_report(runs, "report.html")
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditor.base import AuditorError
from auditor.files import write_file
from auditor.run.monitor import FIGURE_KEYS, Thresholds

# figure key -> (plot title, y-axis label)
PLOTS: dict[str, tuple[str, str]] = {
    "ppl_ratio": ("Perplexity relative to the base model", "ppl / ppl(base)"),
    "retention": ("Retention of earlier edits", "share still holding"),
    "watch_pass_rate": ("Watchlist pass rate", "share of watched answers holding"),
    "norm_ratio": ("Norm of the edited matrix relative to the base", "||W|| / ||W_base||"),
    "cond_ratio": ("Condition number of the edited matrix relative to the base", "cond(W) / cond(W_base)"),
    "ppl_trend": ("Trend of perplexity", "slope of log(ppl ratio) per step"),
    "cumulative_spill": ("Cumulative spill over the watch bank", "share of watched swaps moved since the start"),
}
THRESHOLD_OF = {key: name for name, key in FIGURE_KEYS.items()}  # figure key -> monitor figure name


class ReportError(AuditorError, ValueError):
    """The report cannot be made (no runs, unreadable input); one line."""


@dataclass
class Run:
    label: str  # "rome/consistent"
    run: str  # the run's id
    source: str  # where it was read from
    steps: list[dict[str, Any]] = field(default_factory=list)  # {"edits": n, figure key: value, ...}
    thresholds: dict[str, float] = field(default_factory=dict)
    stopped: bool = False
    reason: str | None = None

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(number of edits, value) of every step where the figure was measured."""
        xs, ys = [], []
        for s in self.steps:
            v = s.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                xs.append(s["edits"])
                ys.append(float(v))
        return xs, ys

    def first_crossing(self, key: str) -> int | None:
        """The number of edits at which the figure first crossed its threshold (None: never)."""
        name = THRESHOLD_OF.get(key)
        if name is None:
            return None
        th = Thresholds(**{k: v for k, v in self.thresholds.items() if k in Thresholds.__dataclass_fields__})
        for s in self.steps:
            if th.crossed(name, s.get(key)):
                return s["edits"]
        return None


# ---------------------------------------------------------------- reading runs


def runs_from_workspace(directory: str | Path) -> list[Run]:
    """The sequence runs recorded in a workspace's ledger (read without loading the model)."""
    from auditor.record.ledger import entry_facts
    from auditor.run.sequence import entry_collateral
    from auditor.run.workspace import WorkspaceError, open_ledger

    try:
        ledger = open_ledger(directory)
    except WorkspaceError as e:
        raise ReportError(str(e)) from None
    runs: dict[str, Run] = {}
    try:
        for e in ledger.entries():
            note = e.row.get("note") or ""
            if e.kind == "revert" and note.startswith("sequence "):
                run_id, _, rest = note[len("sequence "):].partition(":")
                if run_id in runs:
                    runs[run_id].stopped = True
                    runs[run_id].reason = rest.split("rolled back:", 1)[-1].strip() or rest.strip()
                continue
            mon = (e["metrics"] or {}).get("monitor") if e.kind == "edit" and e.status == "applied" else None
            if not mon or not mon.get("run"):
                continue
            run = runs.setdefault(mon["run"], Run(label=mon.get("label") or mon["run"], run=mon["run"],
                                                  source=str(directory), thresholds=mon.get("thresholds", {})))
            done = (run.steps[-1]["edits"] if run.steps else 0) + len(entry_facts(e))
            run.steps.append({**mon, "edits": done, "entry": e.id, "collateral": [entry_collateral(e)]})
    finally:
        ledger.close()
    return list(runs.values())


def runs_from_jsonl(path: str | Path) -> list[Run]:
    """The runs in the JSON lines of ``edit-auditor sequence --out`` (a file may hold several)."""
    runs: dict[str, Run] = {}
    pending: list[dict[str, Any]] = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ReportError(f"{path}: cannot read ({e.strerror})") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ReportError(f"{path}:{n}: not a JSON line ({e.msg})") from None
        if rec.get("final"):
            run = runs.setdefault(rec.get("run") or f"{path}:{n}", Run(
                label=rec.get("label") or str(path), run=rec.get("run") or "", source=str(path),
                thresholds=rec.get("thresholds", {})))
            run.steps.extend(s for s in pending if s.get("changed", True))
            run.stopped, run.reason = bool(rec.get("stopped")), rec.get("reason")
            pending = []
        elif "step" in rec:
            pending.append(rec)
    if pending:
        raise ReportError(f"{path}: the last run has no final line (was it interrupted?)")
    return list(runs.values())


def load_runs(*, workspaces: list[str | Path] = (), jsonl: list[str | Path] = ()) -> list[Run]:
    runs = [r for w in workspaces for r in runs_from_workspace(w)] + [r for j in jsonl for r in runs_from_jsonl(j)]
    if not runs:
        raise ReportError("no sequence runs found (run `edit-auditor sequence --workspace DIR ...` first)")
    return runs


# ---------------------------------------------------------------- plots


def plot_png(runs: list[Run], key: str, *, width: float = 6.4, height: float = 3.6, dpi: int = 100) -> bytes:
    """One figure against the number of edits, a line per run, threshold and first crossings marked."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    title, ylabel = PLOTS[key]
    fig = Figure(figsize=(width, height), dpi=dpi)
    ax = fig.add_subplot()
    limits = set()
    for run in runs:
        xs, ys = run.series(key)
        if not xs:
            continue
        (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=run.label)
        crossed = run.first_crossing(key)
        if crossed is not None:
            ax.plot([crossed], [ys[xs.index(crossed)]], marker="X", markersize=10, color=line.get_color())
        if THRESHOLD_OF.get(key) and run.thresholds:
            limits.add(Thresholds(**{k: v for k, v in run.thresholds.items()
                                     if k in Thresholds.__dataclass_fields__}).value(THRESHOLD_OF[key]))
    for limit in sorted(limits):
        ax.axhline(limit, linestyle="--", color="#c0392b", linewidth=1, label=f"threshold {limit:g}")
    ax.set_title(title)
    ax.set_xlabel("number of edits")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ---------------------------------------------------------------- HTML


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else html.escape(str(value))


def summary_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """Per run: label, edits, stopped, reason, final figures, the edit of each first crossing."""
    rows = []
    for run in runs:
        last = run.steps[-1] if run.steps else {}
        row = {"run": run.label, "id": run.run, "edits": len(run.steps), "stopped": run.stopped,
               "reason": run.reason}
        row.update({key: last.get(key) for key in PLOTS})
        row.update({f"crossed {THRESHOLD_OF[key]}": run.first_crossing(key) for key in PLOTS})
        rows.append(row)
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


MOVED_SHOWN = 8  # moved subjects named per cell; the rest counted


def who_else_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per applied entry of every run: what it edited, its own collateral audit (spill rate,
    preservation cost, moved subjects; None when not audited) and the run's cumulative spill after
    its step with the watched swaps moved to their target so far."""
    rows = []
    for run in runs:
        for step in run.steps:
            watched = [m.get("subject", "?") for m in step.get("spill_moved") or [] if m.get("toward_target", True)]
            for c in step.get("collateral") or [{}]:
                rows.append({"run": run.label, "edits": step.get("edits"), "entry": c.get("entry", step.get("entry")),
                             "edit": c.get("edit"), "spill rate": c.get("spill_rate"),
                             "preservation cost": c.get("preservation_cost"), "moved by the edit": c.get("moved"),
                             "cumulative spill": step.get("cumulative_spill"),
                             "watched swaps moved to their target": watched})
    return rows


def _cell(value: Any) -> str:
    """A table cell: a dash for a figure not measured, a list as names (the first few, then a count)."""
    if value is None:
        return "\u2013"
    if isinstance(value, list):
        shown = ", ".join(str(v) for v in value[:MOVED_SHOWN])
        more = f" (+{len(value) - MOVED_SHOWN} more)" if len(value) > MOVED_SHOWN else ""
        return html.escape(shown + more) if value else "none"
    return _fmt(value)


def _who_else_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>No applied entries.</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f'<table class="who-else"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_html(runs: list[Run], *, title: str = "Edit Auditor capacity report") -> str:
    plots = []
    for key, (plot_title, _) in PLOTS.items():
        if not any(run.series(key)[0] for run in runs):
            continue
        data = base64.b64encode(plot_png(runs, key)).decode("ascii")
        plots.append(f'<figure><img alt="{html.escape(plot_title)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{html.escape(plot_title)}</figcaption></figure>")
    sources = sorted({r.source for r in runs})
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:75em}table{border-collapse:collapse;font-size:90%}"
        "td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left}figure{display:inline-block;margin:.5em}"
        "</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>{len(runs)} run(s) from {', '.join(html.escape(s) for s in sources)}. Every figure is relative to "
        "the base model; the x axis counts the edits applied in the run. A cross marks the edit at which a "
        "run first crossed the dashed threshold.</p>"
        "<h2>Final figures and first crossings</h2>" + _table(summary_rows(runs)) +
        "<h2>Curves</h2>" + "".join(plots) +
        "<h2>Who else changed, per entry</h2><p>Each applied entry's collateral audit: its spill rate (share "
        "of same-type swaps moved to the new target), preservation cost (tr(&Delta;C&Delta;<sup>T</sup>) / "
        "tr(WCW<sup>T</sup>), worst edited layer) and the subjects it moved; a dash where the entry was not "
        "audited. Then the run's cumulative spill after that step: the share of its watch bank (20 same-type "
        "swaps of the run's requests) moved to their new target since the run started.</p>"
        + _who_else_table(who_else_rows(runs)) + "</body></html>\n"
    )


def write_report(runs: list[Run], out: str | Path, *, title: str = "Edit Auditor capacity report") -> Path:
    """Write the HTML report to ``out`` under the output-path policy (:mod:`auditor.files`)."""
    return write_file(out, render_html(runs, title=title), what="report --out")


def figures_of_interest() -> list[str]:
    """The figure keys the report plots, in order (the window's Sequence view draws the same)."""
    return list(PLOTS)

