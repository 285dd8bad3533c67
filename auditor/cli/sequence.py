"""``edit-auditor sequence`` and ``edit-auditor report``: sequential audits.

Commands::

    edit-auditor sequence MODEL|--workspace DIR --requests FILE [--method rome] [--key-mode ...]
                          [--batch-size N] [--stop-on all|none|ppl,retention=0.5,...]
                          [--allow-collapse] [--hparams JSON] --out FILE.jsonl
    edit-auditor report --workspace DIR [--workspace DIR2 ...] [--runs FILE.jsonl ...] --out report.html

``sequence`` writes one JSON line per step with every monitored figure (monitor.py) and a final
line (``"final": true``) saying whether and why it stopped; it exits 1 when the monitor stopped it
or when a step could not be applied (a failed batch, an edit the collapse guard refused).
With MODEL instead of ``--workspace`` the run uses a new workspace in a temporary folder (the
JSON lines are then the only record). ``report`` draws the curves of every run recorded in the
workspaces (and JSON-lines files) into one self-contained HTML file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from auditor.cli.common import add_model_args, bounded_int, fail, memory_from_args, model_or_workspace, unicode_text
from auditor.files import atomic_file, check_output

EXIT_STOPPED = 1


def _errors() -> tuple[type[BaseException], ...]:
    from auditor.engine.hparams import HParamsError
    from auditor.run.calibration import CalibrationError
    from auditor.run.edit import EditCancelled, EditFailed
    from auditor.run.monitor import MonitorError
    from auditor.run.workspace import WorkspaceError

    return (EditFailed, EditCancelled, HParamsError, MonitorError, WorkspaceError, CalibrationError)


def __getattr__(name: str) -> Any:  # ERRORS is resolved lazily so `--help` stays fast
    if name == "ERRORS":
        return _errors()
    raise AttributeError(name)


def _methods() -> tuple[str, ...]:
    from auditor.engine.registry import METHOD_NAMES

    return tuple(METHOD_NAMES)


def cmd_sequence(args: argparse.Namespace) -> int:
    from auditor.cli.edit import _hparam_overrides
    from auditor.model.requests import load_requests
    from auditor.run.calibration import monitor_for
    from auditor.run.monitor import parse_stop_on
    from auditor.run.sequence import run_sequence
    from auditor.run.workspace import Workspace

    model_or_workspace(args)
    if args.batch_size < 1:
        raise fail("--batch-size must be at least 1")
    if args.method not in _methods():
        raise fail(f"unknown method {args.method!r}; available: {', '.join(_methods())}")
    parse_stop_on(args.stop_on)  # a bad specification fails before the model loads
    requests = load_requests(args.requests)
    overrides = _hparam_overrides(args)
    target = check_output(args.out, what="sequence --out")
    tmp = None
    if args.workspace:
        ws = Workspace.open(args.workspace, device=args.device, memory=memory_from_args(args))
    else:
        tmp = tempfile.TemporaryDirectory(prefix="edit-auditor-sequence-")
        ws = Workspace.init(args.model, Path(tmp.name) / "workspace", dtype=args.dtype, device=args.device,
                        memory=memory_from_args(args))
        print(f"{args.model}: running in a temporary workspace (use --workspace DIR to keep the ledger)",
              file=sys.stderr)
    try:
        with atomic_file(target, "w", what="sequence --out") as out:

            def write(record: dict[str, Any]) -> None:
                out.write(json.dumps(record, default=str) + "\n")
                out.flush()
                if not args.quiet:
                    print(_summary(record), file=sys.stderr, flush=True)

            final = run_sequence(ws, requests, monitor_for(ws.base_fingerprint, args.stop_on),
                                 batch_size=args.batch_size, on_step=write, method=args.method,
                                 key_mode=args.key_mode, hparams=overrides, allow_collapse=args.allow_collapse)
            write(final)
    finally:
        ws.close()
        if tmp is not None:
            tmp.cleanup()
    return EXIT_STOPPED if final["stopped"] else 0


def _summary(record: dict[str, Any]) -> str:
    if record.get("final"):
        if record["stopped"]:
            return f"stopped at step {record.get('stopped_at_step')}: {record['reason']}" + (
                f" (rolled back entries {record.get('rolled_back')})" if record.get("rolled_back") else "")
        return f"done: {record['edits_applied']} edits applied, no threshold crossed"

    def f(key: str) -> str:
        v = record.get(key)
        return "-" if v is None else f"{v:.4g}"

    crossed = ", ".join(c["reason"] for c in record.get("crossed", []))
    return (f"step {record['step']} {'/'.join(record['status'])}: ppl x{f('ppl_ratio')} retention {f('retention')} "
            f"watch {f('watch_pass_rate')} norm x{f('norm_ratio')} cond x{f('cond_ratio')}"
            f" spill {f('cumulative_spill')}"
            + (f"  CROSSED {crossed}" if crossed else ""))


def cmd_report(args: argparse.Namespace) -> int:
    from auditor.run.report import ReportError, load_runs, write_report

    if not args.workspace and not args.runs:
        raise fail("name at least one --workspace or --runs FILE.jsonl")
    try:
        runs = load_runs(workspaces=args.workspace or [], jsonl=args.runs or [])
        path = write_report(runs, args.out, title=args.title)
    except ReportError as e:
        raise fail(str(e)) from None
    print(json.dumps({"report": str(path), "runs": [r.label for r in runs],
                      "steps": [len(r.steps) for r in runs]}))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sequence", help="apply a sequence of edits with the collapse monitor on",
        description="Apply the requests in order, measuring after each step perplexity relative to the "
                    "base, retention of earlier edits, the watchlist, and norm and condition number of "
                    "each edited matrix relative to the base. When a threshold is crossed the run stops "
                    "and the offending step is reverted (new ledger entries); a step that cannot be applied "
                    "(a failed batch, an edit the guard refuses) also stops the run. One JSON line per step, "
                    "then a final line. Exit code 1 when the run stopped.")
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="a checkpoint folder, a .gguf file or 'demo' (not with --workspace)")
    add_model_args(p, model=False)
    p.add_argument("--workspace", "-w", type=Path, default=None, metavar="DIR",
                   help="the workspace to edit (every step is recorded in its ledger)")
    p.add_argument("--requests", required=True, type=Path, metavar="FILE",
                   help="JSON or JSON-lines file of edit requests, applied in order")
    p.add_argument("--method", default="rome",
                   help="editing method: rome (one entry per request), memit or alphaedit (one entry per "
                        "batch) (default: rome)")
    p.add_argument("--key-mode", default="consistent", choices=("consistent", "original"),
                   help="ROME key mode (default: consistent)")
    p.add_argument("--batch-size", type=bounded_int(1, 100_000), default=1, metavar="N",
                   help="requests per step; the monitor decides after each step (default: 1)")
    p.add_argument("--stop-on", default="all", metavar="SPEC",
                   help="figures that stop the run, with optional thresholds: 'all' (default), 'none', or "
                        "a list of ppl, retention, watch, norm, cond, trend, spill, e.g. 'ppl=1.5,norm'; spill: the "
                        "share of 20 same-type swaps of the requests (the watch bank) moved to their new target "
                        "since the run started, default threshold 0.5")
    p.add_argument("--allow-collapse", action="store_true",
                   help="apply edits the per-edit collapse guard flags (the monitor still watches)")
    p.add_argument("--hparams", default=None, metavar="JSON|FILE", help="hyper-parameter overrides")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.jsonl", help="write one JSON line per step here")
    p.add_argument("--quiet", action="store_true", help="no per-step line on stderr")
    p.set_defaults(func=cmd_sequence)

    p = subparsers.add_parser(
        "report", help="capacity report: monitored curves of sequences as one HTML file",
        description="Curves of every monitored figure against the number of edits (one line per run), "
                    "the edit at which each crossed its threshold, and a table of final figures, as a "
                    "self-contained HTML file with embedded PNG plots.")
    p.add_argument("--workspace", "-w", type=Path, action="append", metavar="DIR",
                   help="a workspace whose sequence runs to include (repeatable)")
    p.add_argument("--runs", type=Path, action="append", metavar="FILE.jsonl",
                   help="the JSON lines of `edit-auditor sequence --out` to include (repeatable)")
    p.add_argument("--title", type=unicode_text, default="Edit Auditor capacity report", help="the report's title")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.html", help="where to write the report")
    p.set_defaults(func=cmd_report)
