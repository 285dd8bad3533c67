"""``edit-auditor edit``: apply (or dry-run) a file of edit requests, one JSON line per edit.

Without ``--workspace`` the model is edited in memory and nothing is recorded; with it,
every attempt goes into the workspace's ledger (see run/workspace.py).

Example::

    edit-auditor edit demo --requests facts.json --key-mode original --dry-run --out runs.jsonl
    edit-auditor edit --workspace ws/ --requests facts.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from auditor.cli.common import (add_json_arg, add_model_args, bounded_int, fail, hparam_int, load_from_args,
                                memory_from_args, model_or_workspace, print_table, printable)
from auditor.files import atomic_file, check_output
from auditor.engine.hparams import KEY_MODES

TABLE_COLUMNS = ("case_id", "subject", "target_new", "status", "denominator", "ppl_ratio",
                 "efficacy", "generalization", "locality", "prefixed_efficacy", "collapse_risk", "seconds")


def _errors() -> tuple[type[BaseException], ...]:
    from auditor.engine.hparams import HParamsError
    from auditor.run.batch import BatchFailed
    from auditor.run.edit import EditCancelled, EditFailed
    from auditor.model.subject_bank import BankError
    from auditor.run.workspace import WorkspaceError

    return (EditFailed, EditCancelled, HParamsError, BatchFailed, WorkspaceError, BankError)


def __getattr__(name: str) -> Any:  # ERRORS is resolved lazily so `--help` stays fast
    if name == "ERRORS":
        return _errors()
    raise AttributeError(name)


MAX_HPARAMS_BYTES = 1 << 20


def _hparam_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``--hparams`` and the flags, merged (flags win) and checked by the one validation path
    (:func:`auditor.engine.hparams.check_hparams`) before any model is loaded."""
    from auditor.engine.hparams import HParamsError, check_hparams

    overrides: dict[str, Any] = {}
    if args.hparams:
        text = args.hparams
        path = Path(text)
        if len(text) < 4096 and path.is_file():
            if path.stat().st_size > MAX_HPARAMS_BYTES:
                raise fail(f"--hparams {path}: larger than {MAX_HPARAMS_BYTES} bytes")
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise fail(f"--hparams {path}: not UTF-8 text") from None
        try:
            overrides = json.loads(text)
        except json.JSONDecodeError as e:
            raise fail(f"--hparams is neither a JSON object nor a JSON file: {e.msg}") from None
        except RecursionError:
            raise fail("--hparams: nested too deeply") from None
        if not isinstance(overrides, dict):
            raise fail("--hparams must be a JSON object")
    for key in ("layer", "v_num_grad_steps", "mom2_n_tokens"):
        value = getattr(args, key, None)
        if value is not None:
            overrides[key] = value
    try:
        from auditor.engine.registry import hparams_class

        return check_hparams(overrides, hparams_class(getattr(args, "method", "rome")))
    except HParamsError as e:
        raise fail(f"hyper-parameters: {e}") from None


def audit_config(args: argparse.Namespace) -> Any:
    """The collateral audit's settings from ``--subject-bank``, ``--audit-sample``, ``--no-audit``
    (None: no audit); a bad bank file fails here, before any model is loaded."""
    from auditor.measure.collateral import CollateralConfig
    from auditor.model.subject_bank import load_bank

    if args.no_audit:
        return None
    config = CollateralConfig(swaps=args.audit_sample, bank=args.subject_bank)
    load_bank(config.bank)
    return config


class _ProgressLine:
    """A one-line progress display on stderr (only when it is a terminal or --progress)."""

    def __init__(self, enabled: bool, n: int):
        self.enabled, self.n, self.i = enabled, n, 0

    def __call__(self, p: Any) -> None:
        if not self.enabled:
            return
        if p.phase == "v":
            detail = f"v* step {p.step}/{p.total} loss {p.loss:.3f} P(target) {p.target_prob:.3f}"
        elif p.phase == "stats" and p.total:
            detail = f"key statistics {100 * p.step / p.total:.0f}%"
        else:
            detail = p.message or p.phase
        sys.stderr.write(f"\r[{self.i + 1}/{self.n}] {detail:<70}")
        sys.stderr.flush()

    def done(self) -> None:
        self.i += 1
        if self.enabled:
            sys.stderr.write("\n")


def cmd_edit(args: argparse.Namespace) -> int:
    from auditor.model.requests import load_requests
    from auditor.run.edit import Editor

    model_or_workspace(args)
    overrides = _hparam_overrides(args)
    requests = load_requests(args.requests)
    args.audit_config = audit_config(args)
    kwargs = dict(method=args.method, key_mode=args.key_mode, hparams=overrides, dry_run=args.dry_run,
                  allow_collapse=args.allow_collapse)
    show = args.progress or (sys.stderr.isatty() and not args.json)
    bar = _ProgressLine(show, len(requests))
    target = check_output(args.out, what="edit --out") if args.out else None
    records = []

    with atomic_file(target, "a", what="edit --out") if target else contextlib.nullcontext() as out:
        def emit(record: dict[str, Any]) -> None:
            records.append(record)
            if out:
                out.write(json.dumps(record, default=str) + "\n")
                out.flush()
            if args.json:
                print(json.dumps(record, default=str), flush=True)

        if args.method != "rome" or args.batch_size not in (None, 1):
            from auditor.cli.batch import run_batches

            if args.method == "rome":
                raise fail("ROME edits one request per update: use --batch-size 1, or --method memit|alphaedit")
            run_batches(args, requests, kwargs, emit, bar)
        elif args.workspace:
            if args.independent:
                raise fail("--independent measures methods on the unedited model and cannot be recorded; drop --workspace")
            from auditor.run.workspace import Workspace

            ws = Workspace.open(args.workspace, device=args.device, memory=memory_from_args(args))
            ws.editor.check_requests(requests)
            ws.editor.collateral = args.audit_config
            for req in requests:
                result, entry = ws.edit(req, progress=bar, **kwargs)
                bar.done()
                emit({**result.record(), "entry_id": entry.id, "ledger_head": entry.content_hash})
                if not args.json:
                    from auditor.cli.ledger import head_line

                    print(head_line(entry.id, entry.content_hash), file=sys.stderr)
        else:
            editor = Editor(load_from_args(args))
            editor.collateral = args.audit_config

            def on_result(_i: int, result: Any) -> None:
                bar.done()
                emit(result.record())

            editor.edit_many(requests, independent=args.independent, on_result=on_result,
                             progress=bar, **kwargs)
    if not args.json:
        print_table([r for r in records if "summary" not in r], TABLE_COLUMNS)
        for r in records:
            if r.get("summary") == "batch":
                print(f"batch {r['batch']}: {r['status']}, {r['n_requests']} requests, layers {r['layers']}, "
                      f"efficacy {r['efficacy']}, perplexity ratio {r['ppl_ratio']}, "
                      f"max update/weight norm {r['update_ratio_max']}")
        for r in records:
            if r.get("error"):
                who = f"batch {r.get('batch')}" if r.get("summary") == "batch" else r.get("case_id")
                print(printable(f"{who}: {r['status']}: {r['error']}"), file=sys.stderr)
    return 0 if all(r["status"] in ("applied", "dry-run") for r in records) else 1


_positive = bounded_int(1, 100_000)  # --batch-size; the 0.1 name (auditor.cli_edit._positive) kept


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "edit", help="apply knowledge edits (ROME) and measure each one",
        description="Apply the requests of a JSON file (CounterFact, ZsRE or flat records) one after "
                    "another, each measured: denominator, perplexity before/after, efficacy, "
                    "generalization, locality, portability. Exit code 1 if any edit failed or was "
                    "rejected by the collapse guard.")
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="a checkpoint folder, a .gguf file or 'demo' (not with --workspace)")
    add_model_args(p, model=False)
    p.add_argument("--requests", required=True, type=Path, metavar="FILE",
                   help="JSON or JSON-lines file of edit requests")
    p.add_argument("--method", default="rome", choices=("rome", "memit", "alphaedit"),
                   help="editing method (default: rome); memit and alphaedit edit a batch per update")
    p.add_argument("--batch-size", type=_positive, default=None, metavar="N",
                   help="requests per update for memit/alphaedit (default: all in one batch); "
                        "batches run one after another; rome: 1")
    p.add_argument("--key-mode", default="consistent", choices=KEY_MODES,
                   help="consistent: prefixed keys everywhere (r-ROME, Gupta et al. 2024; default); "
                        "original: the reference implementation's unprefixed current key; "
                        "joint: a rank-two update mapping both the bare and the prefixed key to v* (with a first-token "
                        "subject it keys on the template's last token and moves other subjects: the collateral "
                        "audit flags it)")
    p.add_argument("--layer", type=hparam_int, default=None, help="layer to edit (default: the family's)")
    p.add_argument("--steps", dest="v_num_grad_steps", type=hparam_int, default=None, metavar="N",
                   help="maximum v* optimisation steps")
    p.add_argument("--stats-tokens", dest="mom2_n_tokens", type=hparam_int, default=None, metavar="N",
                   help="tokens of reference text behind the key statistics")
    p.add_argument("--hparams", default=None, metavar="JSON|FILE",
                   help="hyper-parameter overrides as a JSON object or a JSON file")
    p.add_argument("--independent", action="store_true",
                   help="evaluate every request as a single edit on the unedited model")
    p.add_argument("--dry-run", action="store_true", help="compute and measure, leave the weights untouched")
    p.add_argument("--allow-collapse", action="store_true",
                   help="apply edits the collapse guard flags (explicit override)")
    p.add_argument("--workspace", type=Path, default=None, metavar="DIR",
                   help="record every attempt in this workspace's ledger")
    p.add_argument("--subject-bank", default=None, metavar="FILE",
                   help="the collateral audit's subject bank (default: the shipped resources/subject_bank.json)")
    p.add_argument("--audit-sample", type=_positive, default=20, metavar="N",
                   help="same-type subjects swapped into each edited prompt by the collateral audit (default 20)")
    p.add_argument("--no-audit", action="store_true",
                   help="skip the collateral audit (who else changed); the guard then cannot check spill")
    p.add_argument("--out", type=Path, default=None, metavar="FILE.jsonl", help="append one JSON line per edit")
    p.add_argument("--progress", action="store_true", help="show progress on stderr even when not a terminal")
    add_json_arg(p)
    p.set_defaults(func=cmd_edit)
