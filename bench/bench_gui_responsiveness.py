"""How long does the GUI event loop stall during apply, revert, batch, sequence and close?

Opens the real main window (offscreen unless a display is set) on the demo model in a
temporary workspace and drives it through its widgets: an applied ROME edit, its revert, a
MEMIT batch, a two-step sequence, and a close during a running edit ("Cancel the running job
and quit?" answered yes: the window must close when the worker has stopped, never blocking).
Meanwhile a 10 ms QTimer records the time between its ticks on the GUI thread: a tick that
comes late means the event loop was blocked (by the GUI's own work, or by the worker holding
the GIL). Prints, per action, the longest stall, the 99th percentile and the stalls over 100 ms,
and the longest gap per engine phase. The target is no stall over 100 ms.

    QT_QPA_PLATFORM=offscreen .venv/bin/python bench/bench_gui_responsiveness.py [--steps N] [--threads N]

``--steps`` sets the v* optimisation steps of every edit (fewer: a shorter run, the same kinds of
work). Runs unchanged on a GPU machine (the device follows the app's setting, ``auto`` by default).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

TICK_MS = 10
TIMEOUT = 1800.0
REQUESTS = [
    {"prompt": "{} is located in the city of", "subject": "The Eiffel Tower", "target_new": "Rome"},
    {"prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux", "target_new": "English"},
]


class Stalls:
    """A GUI-thread heartbeat: the gaps between the ticks of a 10 ms timer, tagged with the phase."""

    def __init__(self, window):
        from PySide6.QtCore import QElapsedTimer, QTimer

        self.gaps: list[tuple[float, str]] = []
        self.phase = "start"
        self.clock = QElapsedTimer()
        self.timer = QTimer()
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(lambda: self.gaps.append((self.clock.restart(), self.phase)))
        window.runner.progress.connect(lambda p: setattr(self, "phase", getattr(p, "phase", None) or self.phase))

    def start(self) -> None:
        self.gaps.clear()
        self.phase = "start"
        self.clock.start()
        self.timer.start()

    def stop(self) -> list[tuple[float, str]]:
        self.timer.stop()
        return self.gaps[1:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=0, help="v* steps of every edit (0: the family's default)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the worker (0: torch's default)")
    args = parser.parse_args()

    from PySide6.QtCore import QSettings

    from ui import settings
    from ui.app import make_app, process_until

    make_app()
    tmp = Path(tempfile.mkdtemp(prefix="edit-auditor-bench-"))
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp / "settings"))
    settings.put(settings.WORKSPACES_DIR, str(tmp / "workspaces"))
    from ui.main_window import MainWindow

    window = MainWindow(restore_last=False)
    if args.threads:
        window.runner._threads = args.threads
    window.resize(1400, 900)
    window.show()

    def spin(until: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
        return process_until(until, timeout)

    def idle() -> bool:
        return spin(lambda: not window.runner.busy and not window.panel._answer_timer.isActive())

    t = time.perf_counter()
    window.open_path("demo")
    if not spin(lambda: window.workspace is not None and not window.runner.busy):
        print("could not open the demo model:", window.last_error)
        return 1
    print(f"demo workspace opened in {time.perf_counter() - t:.1f} s; device {window.workspace.lm.device}; "
          f"torch threads in worker: {args.threads or 'default'}; v* steps: {args.steps or 'default'}")
    panel, stalls = window.panel, Stalls(window)
    if args.steps:
        panel.hp["v_num_grad_steps"].setValue(args.steps)
    window.ask_view.prompt.setText("The Eiffel Tower is located in the city of")  # refreshed after each action
    req = REQUESTS[0]
    panel.prompt.setText(req["prompt"])
    panel.subject.setText(req["subject"])
    panel.target_new.setText(req["target_new"])
    idle()

    gc_pauses: list[float] = []
    gc_start = {"t": 0.0}

    def on_gc(phase_name, _info):
        if phase_name == "start":
            gc_start["t"] = time.perf_counter()
        else:
            gc_pauses.append((time.perf_counter() - gc_start["t"]) * 1000)

    gc.callbacks.append(on_gc)
    rows: list[tuple] = []

    def measure(name: str, act: Callable[[], None], done: Callable[[], bool]) -> bool:
        idle()
        stalls.start()
        t0 = time.perf_counter()
        act()
        ok = spin(done)
        gaps = stalls.stop()
        wall = time.perf_counter() - t0
        ms = [g for g, _ in gaps] or [0.0]
        by_phase: dict[str, float] = {}
        for g, ph in gaps:
            by_phase[ph] = max(by_phase.get(ph, 0.0), g)
        p99 = statistics.quantiles(ms, n=100)[98] if len(ms) > 2 else max(ms)
        rows.append((name, wall, len(ms), max(ms), p99, sum(1 for g in ms if g > 100)))
        print(f"{name}: {wall:.1f} s; longest gap per phase (ms): "
              + ", ".join(f"{ph} {g:.0f}" for ph, g in by_phase.items()))
        if window.last_error:
            print(f"  ({name}: {window.last_error})")
        return ok

    # apply, then revert it
    measure("apply", panel.apply_button.click, lambda: not window.runner.busy)
    entry = window.workspace.ledger.head()
    measure("revert", lambda: window.revert(entry.id), lambda: not window.runner.busy)
    # a MEMIT batch of two
    batch = window.batch_panel
    from auditor.model.requests import EditRequest

    batch.set_requests([EditRequest(**r) for r in REQUESTS])
    if args.steps:
        batch.hparams.setText(json.dumps({"v_num_grad_steps": args.steps}))
    measure("batch", batch.submit, lambda: not window.runner.busy)
    # a sequence of two ROME edits, one per step
    path = tmp / "requests.json"
    path.write_text(json.dumps(REQUESTS))
    view = window.sequence_view
    view.hparams = {"v_num_grad_steps": args.steps} if args.steps else None
    view.requests_path.setText(str(path))
    view.stop_on.setText("none")
    view.allow_collapse.setChecked(True)
    measure("sequence", view.run_button.click, lambda: not window.runner.busy)

    # close during an edit: ask, cancel, close when the worker has stopped
    def close_mid_edit() -> None:
        panel.target_new.setText("Berlin")
        idle()
        panel.apply_button.click()
        spin(lambda: window.live_chart.steps >= 1 or not window.runner.busy)
        window.close()
        if window.close_dialog is not None:
            window.quit_button.click()

    closed = measure("close during an edit", close_mid_edit, lambda: not window.isVisible())
    gc.callbacks.remove(on_gc)

    print()
    print(f"{'action':<22} {'s':>7} {'ticks':>6} {'longest stall ms':>17} {'p99 ms':>7} {'stalls>100ms':>13}")
    for r in rows:
        print(f"{r[0]:<22} {r[1]:>7.1f} {r[2]:>6} {r[3]:>17.0f} {r[4]:>7.0f} {r[5]:>13}")
    worst = max(r[3] for r in rows)
    if gc_pauses:
        print(f"garbage collections during the runs: {len(gc_pauses)}, longest {max(gc_pauses):.1f} ms")
    if hasattr(os, "getloadavg"):
        print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"window closed after the cancel: {closed}; ledger verifies: {window.workspace.verify()['ok']}")
    print(f"\nlongest GUI event-loop stall: {worst:.0f} ms "
          f"(timer interval {TICK_MS} ms; target < 100 ms: {'met' if worst < 100 else 'NOT met'})")
    window.workspace.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
