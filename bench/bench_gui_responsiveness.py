"""How long does the GUI event loop stall while an edit runs in the worker thread?

Opens the real main window (offscreen unless a display is set) on the demo model in a
temporary workspace, starts a real ROME edit through the edit panel, and meanwhile lets
a 10 ms QTimer record the time between its ticks on the GUI thread. A tick that comes
late means the event loop was blocked (by the GUI's own work, or by the worker holding
the GIL). Prints the longest stall and a few percentiles, for the edit and, separately,
for its v* phase (the one charted live). The target is a longest stall under 100 ms.

    QT_QPA_PLATFORM=offscreen .venv/bin/python bench/bench_gui_responsiveness.py [--threads N] [--runs N]

Runs unchanged on a GPU machine (the device follows the app's setting, ``auto`` by default).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

TICK_MS = 10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="edits to measure (dry runs, default 2)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads in the worker (0: torch's default)")
    args = parser.parse_args()

    from PySide6.QtCore import QElapsedTimer, QSettings, QTimer

    from ui import settings
    from ui.app import make_app, process_until

    app = make_app()
    tmp = Path(tempfile.mkdtemp(prefix="edit-auditor-bench-"))
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp / "settings"))
    settings.put(settings.WORKSPACES_DIR, str(tmp / "workspaces"))
    from ui.main_window import MainWindow

    window = MainWindow(restore_last=False)
    if args.threads:
        window.runner._threads = args.threads
    window.show()

    def spin(until, timeout=1800.0):
        return process_until(until, timeout)

    t = time.perf_counter()
    window.open_path("demo")
    if not spin(lambda: window.workspace is not None and not window.runner.busy):
        print("could not open the demo model:", window.last_error)
        return 1
    print(f"demo workspace opened in {time.perf_counter() - t:.1f} s; device {window.workspace.lm.device}; "
          f"torch threads in worker: {args.threads or 'default'}")

    gaps: list[tuple[float, str]] = []  # (ms between ticks, phase)
    clock = QElapsedTimer()
    phase = {"name": "start"}
    window.runner.progress.connect(lambda p: phase.__setitem__("name", getattr(p, "phase", phase["name"])))

    def tick():
        gaps.append((clock.restart(), phase["name"]))

    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(tick)
    panel = window.panel
    panel.prompt.setText("{} is located in the city of")
    panel.subject.setText("The Eiffel Tower")
    panel.target_new.setText("Rome")
    panel.target_true.setText("Paris")
    spin(lambda: not window.runner.busy and not panel._answer_timer.isActive(), 60)
    spin(lambda: not window.runner.busy, 120)

    # the collector runs on the GUI thread (ui.worker): time its passes, to tell them from GIL waits
    gc_pauses: list[tuple[float, int]] = []
    gc_start = {"t": 0.0}

    def on_gc(phase_name, info):
        if phase_name == "start":
            gc_start["t"] = time.perf_counter()
        else:
            gc_pauses.append(((time.perf_counter() - gc_start["t"]) * 1000, info.get("generation", -1)))

    gc.callbacks.append(on_gc)
    rows = []
    for run in range(args.runs):
        gaps.clear()
        phase["name"] = "start"
        clock.start()
        timer.start()
        t = time.perf_counter()
        panel.dry_button.click()
        spin(lambda: not window.runner.busy)
        timer.stop()
        wall = time.perf_counter() - t
        if window.last_error:
            print("edit failed:", window.last_error)
            return 1
        ms = [g for g, _ in gaps[1:]] or [0.0]
        v_ms = [g for g, ph in gaps[1:] if ph == "v"] or [0.0]
        rows.append((run + 1, wall, len(ms), max(ms), statistics.quantiles(ms, n=100)[98] if len(ms) > 2 else max(ms),
                     max(v_ms), sum(1 for g in ms if g > 100), window.live_chart.steps))
        by_phase: dict[str, float] = {}
        for g, ph in gaps[1:]:
            by_phase[ph] = max(by_phase.get(ph, 0.0), g)
        print(f"run {run + 1}: longest gap per phase (ms): "
              + ", ".join(f"{ph} {g:.0f}" for ph, g in by_phase.items()))
    window.close()
    gc.callbacks.remove(on_gc)

    print()
    print(f"{'run':>3} {'edit s':>7} {'ticks':>6} {'longest stall ms':>17} {'p99 ms':>7} "
          f"{'longest in v* ms':>17} {'stalls>100ms':>13} {'v* steps':>9}")
    for r in rows:
        print(f"{r[0]:>3} {r[1]:>7.1f} {r[2]:>6} {r[3]:>17.0f} {r[4]:>7.0f} {r[5]:>17.0f} {r[6]:>13} {r[7]:>9}")
    worst = max(r[3] for r in rows)
    if gc_pauses:
        longest, gen = max(gc_pauses)
        print(f"garbage collections during the runs: {len(gc_pauses)}, longest {longest:.1f} ms (generation {gen})")
    if hasattr(os, "getloadavg"):
        print(f"load average during the runs: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"\nlongest GUI event-loop stall during an edit: {worst:.0f} ms "
          f"(timer interval {TICK_MS} ms; target < 100 ms: {'met' if worst < 100 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
