"""How much of the GUI thread's CPU does each window action take, per event-loop turn?

bench_gui_responsiveness.py measures stalls on the demo model (minutes per run); this measures the
GUI thread's own work alone, fast, on a tiny random Llama (edits in about a second): the window is
driven through the same slots (apply, revert from the Edit run tab and from another tab, a
sequence, a tab switch, a close during an edit), and every ``processEvents()`` call is timed with
``time.thread_time()`` (the GUI thread's CPU). Printed per action: the GUI CPU of the longest
event-loop turn, the total, the turns, and the live charts' redraws. ``--profile ACTION`` prints
cProfile's top functions of the GUI thread for that action, ``--longest-turn ACTION`` those of its
longest turn (each turn profiled on its own).

    QT_QPA_PLATFORM=offscreen nice -n 10 .venv/bin/python bench/profile_gui_slots.py [--entries N]
        [--profile "revert (Edit run tab)"] [--longest-turn "apply again"]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

TINY_HP = {"mom2_n_tokens": 4096, "mom2_seq_len": 64, "v_num_grad_steps": 20, "context_n": 2, "context_len": 4}
CAPITALS = [("France", "Rome"), ("Germany", "Oslo"), ("Italy", "Lima"), ("Spain", "Cairo"), ("Peru", "Bern")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=6, help="ledger entries made before the measured actions")
    parser.add_argument("--profile", default="", help="actions to run under cProfile, comma-separated (as printed)")
    parser.add_argument("--demo", action="store_true",
                        help="the demo model (SmolLM2-135M, 4 v* steps) instead of the tiny Llama: minutes")
    parser.add_argument("--longest-turn", default="",
                        help="actions whose longest event-loop turn is profiled, comma-separated")
    args = parser.parse_args()

    from PySide6.QtCore import QEvent, QEventLoop, QObject, QSettings
    from PySide6.QtWidgets import QApplication

    from auditor.model.checkpoint import demo_folder
    from auditor.model.requests import EditRequest
    from auditor.run.workspace import Workspace
    from test_ui_sequence import five_layer_llama
    from transformers import AutoTokenizer
    from ui import settings
    from ui.app import make_app
    from ui.main_window import MainWindow

    tmp = Path(tempfile.mkdtemp(prefix="profile-gui-"))
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp / "settings"))
    AutoTokenizer.from_pretrained(demo_folder()).save_pretrained(tmp / "tok")
    if not args.demo:  # the demo keeps the user's cache: its statistics take minutes to compute
        os.environ["EDIT_AUDITOR_CACHE"] = str(tmp / "cache")
    app = make_app()
    settings.settings().clear()
    hparams = {"v_num_grad_steps": 4} if args.demo else TINY_HP
    ws = Workspace.init("demo" if args.demo else five_layer_llama(tmp / "tiny", tmp / "tok"), tmp / "ws",
                        device="cpu")
    for i in range(0 if args.demo else args.entries):
        s, t = CAPITALS[i % len(CAPITALS)]
        ws.edit(EditRequest(prompt="The capital of {} is", subject=s, target_new=t, target_true="Paris"),
                hparams=TINY_HP, allow_collapse=True)
    ws.close()
    w = MainWindow(restore_last=False)
    w.resize(1400, 900)
    w.show()
    turns: list[float] = []
    profiles: dict[str, cProfile.Profile] = {}
    wanted = {a.strip() for a in args.profile.split(",") if a.strip()}
    wanted_turns = {a.strip() for a in args.longest_turn.split(",") if a.strip()}

    longest: dict[str, tuple[float, cProfile.Profile]] = {}  # action -> its longest turn, profiled
    current = {"name": ""}

    def turn() -> None:
        prof = cProfile.Profile() if current["name"] in wanted_turns else None
        t0 = time.thread_time()
        if prof is not None:
            prof.enable()
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents)
        if prof is not None:
            prof.disable()
        turns.append(time.thread_time() - t0)
        if prof is not None and turns[-1] > longest.get(current["name"], (0.0, None))[0]:
            longest[current["name"]] = (turns[-1], prof)

    def spin(until, timeout=300.0) -> None:
        end = time.monotonic() + timeout
        while not until() and time.monotonic() < end:
            turn()
            time.sleep(0.002)
        for _ in range(20):  # what the last slots posted (deferred redraws, paints)
            turn()
            time.sleep(0.01)

    from ui import refresh

    def idle() -> bool:  # at rest: no job, no redraw waiting (a hidden view's is drawn once quiet)
        return not w.runner.busy and not refresh.pending()

    w.open_path(tmp / "ws")
    spin(lambda: w.workspace is not None and idle())
    w.ask_view.prompt.setText("The capital of France is")
    spin(idle)
    print(f"{'demo' if args.demo else 'tiny Llama'} workspace with {len(w.rows)} entries; "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"{'action':28s} {'max turn ms':>11s} {'total ms':>9s} {'turns':>6s} {'live redraws':>12s} "
          f"{'chart resizes':>13s}")

    class Resizes(QObject):  # a chart resized is a chart whose every axis is laid out and drawn again
        count = 0

        def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt API
            if event.type() == QEvent.Type.Resize:
                Resizes.count += 1
            return False

    resizes = Resizes()
    for chart in (w.live_chart, w.ppl_chart, w.den_chart, w.sequence_view.charts):
        chart.installEventFilter(resizes)

    def live_redraws() -> int:
        return w.live_chart.redraws + getattr(w.sequence_view, "redraws", 0)

    def measure(name: str, act, until=idle, before=idle) -> None:
        spin(before)
        turns.clear()
        current["name"] = name
        redraws, resized = live_redraws(), Resizes.count
        prof = profiles.setdefault(name, cProfile.Profile()) if name in wanted else None
        if prof is not None:
            prof.enable()
        t0 = time.thread_time()
        act()
        turns.append(time.thread_time() - t0)
        spin(until)
        if prof is not None:
            prof.disable()
        print(f"{name:28s} {max(turns) * 1000:11.1f} {sum(turns) * 1000:9.1f} {len(turns):6d} "
              f"{live_redraws() - redraws:12d} {Resizes.count - resized:13d}", flush=True)

    p = w.panel
    p.hp["v_num_grad_steps"].setValue(hparams["v_num_grad_steps"])
    p.prompt.setText("The capital of {} is")
    p.subject.setText("France")
    p.target_new.setText("Rome")
    p.target_true.setText("Paris")
    w.tabs.setCurrentIndex(0)

    def apply() -> None:  # Apply, past the guard (random weights give tiny denominators)
        options = p.options(dry_run=False)
        w.start_edit(p.build_request(), {**options, "hparams": {**options["hparams"], **hparams},
                                         "allow_collapse": True})

    measure("apply (Edit run tab)", apply)
    entry = w.workspace.ledger.head()
    measure("revert (Edit run tab)", lambda: w.revert(entry.id))
    measure("apply again", apply)
    entry = w.workspace.ledger.head()
    w.tabs.setCurrentWidget(w.audit)
    spin(idle)
    measure("revert (Audit tab)", lambda: w.revert(entry.id))
    w.tabs.setCurrentWidget(w.sequence_view)
    spin(idle)
    measure("show Edit run tab", lambda: w.tabs.setCurrentIndex(0))
    path = tmp / "requests.json"
    path.write_text(json.dumps([{"prompt": "The capital of {} is", "subject": s, "target_new": t}
                                for s, t in CAPITALS[:2]]))
    view = w.sequence_view
    view.hparams = hparams
    view.requests_path.setText(str(path))
    view.stop_on.setText("none")
    view.allow_collapse.setChecked(True)
    w.tabs.setCurrentWidget(view)
    measure("sequence (Sequence tab)", view.run_button.click)
    measure("show Audit tab", lambda: w.tabs.setCurrentWidget(w.audit))

    def close_and_quit() -> None:  # "Cancel the running job and quit?" answered yes
        w.close()
        if w.close_dialog is not None:
            w.quit_button.click()

    p.target_new.setText("Berlin")
    measure("apply from the Audit tab", apply, lambda: w.live_chart.steps >= 1 or not w.runner.busy)
    measure("close during an edit", close_and_quit, lambda: not w.isVisible(), before=lambda: True)
    for name, (took, prof) in longest.items():
        print(f"\n---- {name}: its longest event-loop turn ({took * 1000:.1f} ms of GUI CPU, profiled)")
        pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
    for name, prof in profiles.items():
        print(f"\n---- {name}: the GUI thread's functions by cumulative time")
        pstats.Stats(prof).sort_stats("cumulative").print_stats(40)
    w.workspace.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
