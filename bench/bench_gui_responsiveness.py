"""How long does the GUI event loop stall during apply, revert, batch, sequence and close, and why?

Opens the real main window (offscreen unless a display is set) on the demo model in a
temporary workspace and drives it through its widgets: an applied ROME edit, its revert, a
MEMIT batch, a two-step sequence, and a close during a running edit ("Cancel the running job
and quit?" answered yes: the window must close when the worker has stopped, never blocking).

Three heartbeats run meanwhile, each expecting a tick every 10 ms:

- the GUI thread's (a QTimer): a late tick is an event-loop stall, whatever its cause;
- a Python thread in this process: it needs the GIL to tick, so it is late when the worker holds
  the GIL (or when this process is not scheduled);
- a separate process (no shared GIL): it is late only when the machine does not schedule it.

Each GUI tick also records the GUI thread's CPU time, so a stall in which the GUI thread itself
computed (drawing, a slot) is told from one in which it waited. A GUI stall over 100 ms is put
down to: "GUI work" (the GUI thread used over half the gap, or over 50 ms, on its CPU), "scheduling"
(the other process's heartbeat was late too: the machine was busy), "GIL" (only this process's
heartbeat thread was late), or "off CPU" (nothing else was late: a lock, I/O, or a core the other
heartbeat happened to get). Printed per action: the
longest stall, p99, stalls over 100 ms and their causes, the longest stall per engine phase,
and the load average. ``--stacks`` prints the GUI thread's Python stack as the heartbeat thread
saw it during each long stall (taken only when that thread gets the GIL).

    QT_QPA_PLATFORM=offscreen nice -n 10 .venv/bin/python bench/bench_gui_responsiveness.py [--steps N] [--threads N] [--stacks]

``--steps`` sets the v* optimisation steps of every edit (fewer: a shorter run, the same kinds of
work); ``--threads`` the torch threads of a job (default: the window's own choice,
``ui.worker.spare_a_core``: all cores but one unless OMP_NUM_THREADS is set). Runs unchanged on a
GPU machine (the device follows the app's setting, ``auto`` by default).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

TICK_MS = 10
STALL_MS = 100
LATE_MS = 50  # a heartbeat this late (beyond its interval) during a GUI stall counts as "late too"
TIMEOUT = 1800.0
REQUESTS = [
    {"prompt": "{} is located in the city of", "subject": "The Eiffel Tower", "target_new": "Rome"},
    {"prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux", "target_new": "English"},
]

# The other process: ticks every 10 ms on CLOCK_MONOTONIC (shared by all processes) and, when
# terminated, prints its late ticks as JSON [[previous, now], ...].
OTHER_PROCESS = f"""
import json, signal, sys, time
late, stop = [], []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
print("ready", flush=True)
prev = time.monotonic()
while not stop:
    time.sleep({TICK_MS / 1000})
    now = time.monotonic()
    if now - prev > {(TICK_MS + LATE_MS) / 1000}:
        late.append([prev, now])
    prev = now
print(json.dumps(late), flush=True)
"""


class Heartbeats:
    """The three heartbeats: GUI timer (with the GUI thread's CPU time), in-process thread, other process."""

    def __init__(self, window, stacks: bool):
        from PySide6.QtCore import QTimer

        self.stacks = stacks
        self.gui: list[tuple[float, float, str]] = []  # (monotonic, GUI thread CPU s, phase) per tick
        self.thread_late: list[tuple[float, float]] = []  # (previous, now) of late in-process ticks
        self.stack_dumps: list[tuple[float, str]] = []  # (monotonic, GUI stack) during long stalls
        self.phase = "start"
        self.running = False
        self.gui_ident = threading.get_ident()
        self.timer = QTimer()
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(lambda: self.gui.append((time.monotonic(), time.thread_time(), self.phase)))
        window.runner.progress.connect(lambda p: setattr(self, "phase", getattr(p, "phase", None) or self.phase))
        self._beating = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self._thread.start()
        self.other = subprocess.Popen([sys.executable, "-c", OTHER_PROCESS], stdout=subprocess.PIPE, text=True)
        self.other.stdout.readline()  # "ready"

    def _beat(self) -> None:
        prev = time.monotonic()
        dumped_for = 0.0
        while True:
            time.sleep(TICK_MS / 1000)
            now = time.monotonic()
            if not self._beating.is_set():
                prev = now
                continue
            if now - prev > (TICK_MS + LATE_MS) / 1000:
                self.thread_late.append((prev, now))
            prev = now
            last_gui = self.gui[-1][0] if self.gui else now
            if self.stacks and now - last_gui > STALL_MS / 1000 and last_gui != dumped_for:
                frame = sys._current_frames().get(self.gui_ident)
                if frame is not None:
                    self.stack_dumps.append((now, "".join(traceback.format_stack(frame)[-8:])))
                    dumped_for = last_gui

    def start(self) -> None:
        self.gui.clear()
        self.phase = "start"
        self.gui.append((time.monotonic(), time.thread_time(), self.phase))
        self.timer.start()
        self._beating.set()

    def stop(self) -> list[tuple[float, float, str]]:
        self.timer.stop()
        self._beating.clear()
        return list(self.gui)

    def other_late(self) -> list[tuple[float, float]]:
        """Ends the other process and returns its late ticks."""
        self.other.send_signal(signal.SIGTERM)
        out, _ = self.other.communicate(timeout=30)
        return [tuple(x) for x in json.loads(out.strip().splitlines()[-1] or "[]")]


def late_during(late: list[tuple[float, float]], t0: float, t1: float) -> bool:
    """Was a heartbeat late (a missing tick) for part of the interval [t0, t1]?"""
    return any(a < t1 and b > t0 for a, b in late)


def cause(t0: float, t1: float, cpu: float, thread_late, other_late) -> str:
    """Why the GUI thread was late from ``t0`` to ``t1`` (it used ``cpu`` seconds meanwhile).

    GUI work: the GUI thread computed for half the gap, or for over 50 ms (on a loaded machine 50 ms
    of drawing is stretched well past 100 ms by sharing the core). Otherwise the GUI thread waited:
    for a core (the other process was late too: "scheduling"), for the GIL (only this process's
    heartbeat thread was late), or for something neither heartbeat sees ("off CPU": a lock, I/O,
    or a core that the other heartbeat happened to get).
    """
    if cpu > 0.5 * (t1 - t0) or cpu > 0.05:
        return "GUI work"
    if late_during(other_late, t0, t1):
        return "scheduling"
    if late_during(thread_late, t0, t1):
        return "GIL"
    return "off CPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=0, help="v* steps of every edit (0: the family's default)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of a job (0: the window's choice, all cores but one)")
    parser.add_argument("--stacks", action="store_true", help="print the GUI thread's stack during long stalls")
    args = parser.parse_args()

    from PySide6.QtCore import QSettings, QTimer

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

    from ui import refresh

    def idle() -> bool:  # at rest, as before a user's next click: no job, no answer or redraw pending
        return spin(lambda: not window.runner.busy and not window.panel._answer_timer.isActive()
                    and not refresh.pending())

    t = time.perf_counter()
    window.open_path("demo")
    if not spin(lambda: window.workspace is not None and not window.runner.busy):
        print("could not open the demo model:", window.last_error)
        return 1
    from ui.worker import spare_a_core

    threads = args.threads or spare_a_core() or "torch's default (OMP_NUM_THREADS is set)"
    print(f"demo workspace opened in {time.perf_counter() - t:.1f} s; device {window.workspace.lm.device}; "
          f"torch threads of a job: {threads}; v* steps: {args.steps or 'default'}; load {load()}")
    panel, beats = window.panel, Heartbeats(window, args.stacks)
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
    runs: list[tuple[str, float, list, str]] = []  # (action, seconds, GUI ticks, load before)

    def measure(name: str, act: Callable[[], None], done: Callable[[], bool]) -> bool:
        idle()
        before = load()
        beats.start()
        t0 = time.perf_counter()
        act()
        ok = spin(done)
        ticks = beats.stop()
        runs.append((name, time.perf_counter() - t0, ticks, before))
        print(f"{name}: {runs[-1][1]:.1f} s (load {before} before, {load()} after)", flush=True)
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
        # the click as a user's: one event of the event loop (a direct click() ran its slot, the tab
        # switch and the paint that follows in one measured gap, which no user click does)
        QTimer.singleShot(0, panel.apply_button.click)
        spin(lambda: window.runner.busy)
        spin(lambda: window.live_chart.steps >= 1 or not window.runner.busy)
        window.close()
        if window.close_dialog is not None:
            window.quit_button.click()

    closed = measure("close", close_mid_edit, lambda: not window.isVisible())
    gc.callbacks.remove(on_gc)
    worst = report(runs, beats.thread_late, beats.other_late())
    if beats.stacks:
        print(f"\nthe GUI thread's stack during long stalls ({len(beats.stack_dumps)} taken):")
        seen: set[str] = set()
        for _t, stack in beats.stack_dumps:
            if stack not in seen:
                seen.add(stack)
                print(stack)

    if gc_pauses:
        print(f"garbage collections during the runs: {len(gc_pauses)}, longest {max(gc_pauses):.1f} ms")
    print(f"load average at the end: {load()} on {os.cpu_count()} CPUs")
    print(f"window closed after the cancel: {closed}; ledger verifies: {window.workspace.verify()['ok']}")
    print(f"\nlongest GUI event-loop stall: {worst:.0f} ms "
          f"(timer interval {TICK_MS} ms; target < {STALL_MS} ms: {'met' if worst < STALL_MS else 'NOT met'})")
    window.workspace.close()
    return 0


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def report(runs, thread_late, other_late) -> float:
    """Prints the table (per action, then per engine phase) and returns the longest stall in ms."""
    print(f"\n{'action':<9} {'s':>7} {'ticks':>6} {'max stall ms':>13} {'p99 ms':>7} {'>100ms':>7}  causes of stalls >100 ms"
          f"  (load before)")
    worst = 0.0
    for name, wall, ticks, before in runs:
        gaps = [(b[0] - a[0], b[1] - a[1], a[0], b[0], b[2]) for a, b in zip(ticks, ticks[1:])]  # (s, cpu s, t0, t1, phase)
        ms = [g[0] * 1000 for g in gaps] or [0.0]
        p99 = statistics.quantiles(ms, n=100)[98] if len(ms) > 2 else max(ms)
        causes: dict[str, list[float]] = {}
        for dt, cpu, t0, t1, _ph in gaps:
            if dt * 1000 > STALL_MS:
                causes.setdefault(cause(t0, t1, cpu, thread_late, other_late), []).append(dt * 1000)
        said = ", ".join(f"{c} {len(v)} (max {max(v):.0f})" for c, v in sorted(causes.items())) or "-"
        print(f"{name:<9} {wall:>7.1f} {len(ms):>6} {max(ms):>13.0f} {p99:>7.0f} {sum(len(v) for v in causes.values()):>7}"
              f"  {said}  ({before})")
        worst = max(worst, max(ms))
    print("\nlongest stall per engine phase (ms), with the GUI thread's CPU time in it:")
    for name, _wall, ticks, _before in runs:
        by_phase: dict[str, tuple[float, float]] = {}
        for a, b in zip(ticks, ticks[1:]):
            dt, cpu = (b[0] - a[0]) * 1000, (b[1] - a[1]) * 1000
            if dt > by_phase.get(b[2], (0.0, 0.0))[0]:
                by_phase[b[2]] = (dt, cpu)
        print(f"  {name}: " + ", ".join(f"{ph} {g:.0f} (cpu {c:.0f})" for ph, (g, c) in by_phase.items()))
    print(f"\nlate ticks (> {TICK_MS + LATE_MS} ms apart) over the whole run: heartbeat thread in this process "
          f"{len(thread_late)}, other process {len(other_late)}")
    return worst


if __name__ == "__main__":
    sys.exit(main())
