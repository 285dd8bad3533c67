"""``edit-auditor calibrate MODEL|WS``: set the guard's and the monitor's thresholds for one model.

Runs no-op edits (each prompt edited to the model's own answer) and healthy ROME edits of the
requests (default: the shipped ``resources/demo/calibration_counterfact.json``) on the model, puts its weights
back, and stores every threshold at the stated false-alarm rate (default 1% per run of 100 edits)
under the model's fingerprint in ``cache_dir()/calibration/`` (run/calibration.py says how). From
then on every edit, batch and sequence on that model uses them and records their source. A
workspace is calibrated for its base model (its ledger is not touched).

Example::

    edit-auditor calibrate demo --noop 10 --requests counterfact.json --edits 20
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from auditor.cli.common import add_json_arg, add_model_args, bounded_int, fail, load_from_args, print_table


def _errors() -> tuple[type[BaseException], ...]:
    from auditor.engine.hparams import HParamsError
    from auditor.run.calibration import CalibrationError
    from auditor.run.edit import EditFailed
    from auditor.run.workspace import WorkspaceError

    return (CalibrationError, EditFailed, HParamsError, WorkspaceError)


def __getattr__(name: str) -> Any:  # resolved lazily so `--help` stays fast
    if name == "ERRORS":
        return _errors()
    raise AttributeError(name)


def _rate(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < x < 1:
        raise argparse.ArgumentTypeError(f"{text}: a false-alarm rate is between 0 and 1, e.g. 0.01")
    return x


def cmd_calibrate(args: argparse.Namespace) -> int:
    from auditor.cli.edit import _hparam_overrides
    from auditor.files import workspace_of
    from auditor.model.requests import load_requests
    from auditor.model.resources import resource_path
    from auditor.run import calibration
    from auditor.run.workspace import Workspace

    overrides = _hparam_overrides(args)
    requests = load_requests(args.requests or resource_path(calibration.DEFAULT_REQUESTS))
    if not requests:
        raise fail("the requests file holds no requests")
    ws = None
    path = Path(args.model)
    if args.model != "demo" and path.is_dir() and workspace_of(path.resolve()) == path.resolve():
        ws = Workspace.open(path, device=args.device)
        editor, fingerprint = ws.editor, ws.base_fingerprint
    else:
        from auditor.run.edit import Editor

        editor, fingerprint = Editor(load_from_args(args)), None
    show = not args.json and not args.quiet

    def progress(p: Any) -> None:
        if show and p.phase == "calibrate":
            print(f"calibration edit {p.step + 1}/{p.total}: {p.message}", file=sys.stderr, flush=True)

    try:
        cal = calibration.calibrate(editor, requests, n_noop=args.noop, n_edits=args.edits, rate=args.rate,
                                    horizon=args.horizon, hparams=overrides,
                                    fingerprint=fingerprint, progress=progress)
    finally:
        if ws is not None:
            ws.close()
    target = calibration.save(cal)
    if args.json:
        print(json.dumps({"path": str(target), **cal.to_dict()}, default=str))
        return 0
    rows = [{"figure": name, "threshold": rec.get("threshold", "default"), "rule": rec["rule"], "n": rec.get("n"),
             "median": rec.get("median", rec.get("mu")), "worst_seen": rec.get("worst_seen"), "field": rec["field"]}
            for name, rec in cal.figures.items()]
    print_table(rows, ("figure", "field", "threshold", "rule", "n", "median", "worst_seen"))
    print(f"{cal.source}: {cal.edits['noop']} no-op and {cal.edits['healthy']} healthy edits in {cal.seconds:.0f} s, "
          f"false-alarm rate {cal.rate:g} per {cal.horizon} edits; written to {target}", file=sys.stderr)
    for name, rec in cal.figures.items():
        for word, key, detail in (("capped", "capped", "loosest"), ("widened", "widened", "tightest")):
            if key in rec:
                print(f"{name}: the fitted limit {rec[key]['fitted']:.4g} was {word} to "
                      f"{rec[key][detail]:g} (calibration.{detail.upper()})", file=sys.stderr)
        if "one_jump" in rec:
            print(f"{name}: the fitted limit {rec['one_jump']['fitted']:.4g} was raised to {rec['threshold']:.4g}, "
                  f"the trend that one jump inside ppl_jump {rec['one_jump']['ppl_jump']:.4g} makes "
                  f"(a {rec['one_jump']['window']}-edit window)", file=sys.stderr)
        worst = rec.get("worst_seen")
        if "capped" in rec and worst is not None and (worst > rec["threshold"] if rec.get("kind") == "max"
                                                       else worst < rec["threshold"]):
            print(f"{name}: a calibration edit itself ({worst:.4g}) is past the loosest limit: these edits are not "
                  "healthy ones for this model; calibrate with other --requests", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate", help="set the guard's and the monitor's thresholds for a model at a stated false-alarm rate",
        description="Run no-op edits (each prompt edited to the model's own answer) and healthy ROME edits on the "
                    "model, put the weights back, and store every guard and monitor threshold at the false-alarm "
                    "rate under the model's fingerprint; later edits and sequences on the model use them and "
                    "record their source. A workspace (WS) is calibrated for its base model; its ledger is not "
                    "touched.")
    p.add_argument("model", metavar="MODEL|WS",
                   help="a Hugging Face checkpoint folder, a .gguf file, 'demo', or a workspace folder")
    add_model_args(p, model=False)
    p.add_argument("--requests", type=Path, default=None, metavar="FILE",
                   help="the healthy edits (CounterFact, ZsRE or flat JSON; default: the shipped "
                        "resources/demo/calibration_counterfact.json: ten held-out CounterFact records)")
    p.add_argument("--noop", type=bounded_int(0, 1000, what="--noop"), default=10, metavar="N",
                   help="no-op edits, on the first N requests' prompts (default 10)")
    p.add_argument("--edits", type=bounded_int(0, 10000, what="--edits"), default=None, metavar="N",
                   help="healthy edits: the first N requests (default: all)")
    p.add_argument("--rate", type=_rate, default=0.01,
                   help="false alarms allowed per run of --horizon healthy edits (default 0.01)")
    p.add_argument("--horizon", type=bounded_int(1, 100000, what="--horizon"), default=100, metavar="N",
                   help="the run length the rate is stated for, in edits (default 100)")
    p.add_argument("--hparams", default=None, metavar="JSON|FILE", help="hyper-parameter overrides for the edits")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    add_json_arg(p)
    p.set_defaults(func=cmd_calibrate)
