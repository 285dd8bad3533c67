"""``edit-auditor audit WS ENTRY``: re-run the collateral audit of a recorded edit, on demand.

The entry's delta is taken out of the workspace's current model (or, for an entry that is not
applied, the model is taken as it is), the swaps and key-space neighbours are scored, the delta is
put in and they are scored again (measure/collateral.py). So the audit sees the entry in today's
model, with every later edit around it; ``--sample`` swaps more subjects than the default 20.
Nothing is written: the workspace, its ledger and its files are read only.

Example::

    edit-auditor audit ws/ 3 --sample 100 --json
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from auditor.cli.common import add_json_arg, fail, print_table
from auditor.cli.edit import _positive


def _errors() -> tuple[type[BaseException], ...]:
    from auditor.model.subject_bank import BankError
    from auditor.run.workspace import WorkspaceError

    return (BankError, WorkspaceError)


def __getattr__(name: str) -> Any:  # resolved lazily so `--help` stays fast
    if name == "ERRORS":
        return _errors()
    raise AttributeError(name)


def reaudit(ws: Any, entry_id: int, config: Any) -> dict[str, Any]:
    """The collateral audit of ledger entry ``entry_id`` in ``ws``'s current model (weights left as
    they were found, up to float rounding of taking the delta out and back in)."""
    from auditor.engine.deltas import apply_delta
    from auditor.engine.stats import second_moment
    from auditor.measure.collateral import CollateralAudit
    from auditor.model.requests import EditRequest
    from auditor.model.subject_bank import load_bank

    entry = ws.ledger.get(entry_id)
    if entry.kind != "edit" or not entry.delta_hash:
        raise fail(f"entry {entry_id} is a {entry.kind} without a recorded update; only edits can be audited")
    row = entry.row
    raw = entry["requests"] or ([entry["request"]] if entry["request"] else [])
    requests = [EditRequest.from_json(r) for r in raw]
    if not requests:
        raise fail(f"entry {entry_id} records no request")
    delta = ws.ledger.load_delta(entry.delta_hash)
    hp = entry["hparams"] or {}
    layer_of = {ws.lm.spec.weight_name(i): i for i in range(ws.lm.n_layers)}
    C = {}
    if hp.get("mom2_adjustment", True):
        for part in delta.parts_on(None):
            C[layer_of[part.param]] = second_moment(
                ws.lm, layer_of[part.param], n_tokens=hp.get("mom2_n_tokens", 40000),
                seq_len=hp.get("mom2_seq_len", 256), dtype=hp.get("mom2_dtype", "float64"), ignore_edits=True)[0]
    active = entry.status == "applied" and entry_id in {e.id for e in ws.ledger.active_at(None)}
    audit = CollateralAudit(ws.lm, load_bank(config.bank), config)
    if active:
        apply_delta(ws.lm.model, delta, sign=-1)
    pending = audit.prepare(requests, delta, C)
    apply_delta(ws.lm.model, delta)
    try:
        report = audit.finish(pending)
    finally:
        if not active:
            apply_delta(ws.lm.model, delta, sign=-1)
    return {"entry_id": entry_id, "method": row.get("method"), "status": entry.status, "active": active,
            **report}


def cmd_audit(args: argparse.Namespace) -> int:
    from auditor.measure.collateral import CollateralConfig
    from auditor.model.subject_bank import load_bank
    from auditor.run.workspace import Workspace

    config = CollateralConfig(swaps=args.sample, neighbours=args.neighbours, seed=args.seed, bank=args.subject_bank,
                              max_rows=max(args.sample, CollateralConfig.max_rows))
    load_bank(config.bank)  # a bad bank file fails before the model loads
    ws = Workspace.open(args.workspace, device=args.device)
    report = reaudit(ws, args.entry, config)
    if args.json:
        print(json.dumps(report, default=str))
        return 0
    print_table(report["rows"], ("kind", "subject", "p_before", "p_after", "answer_before", "answer_after", "moved"))
    from auditor.measure.collateral import summary

    print(f"entry {args.entry}: {summary(report)}", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "audit", help="re-run the collateral audit (who else changed) of a recorded edit",
        description="Score other subjects of the edited prompt's type (swaps) and the bank subjects whose keys "
                    "the update moves most (neighbours) without and with the entry's update, in the workspace's "
                    "current model; print the spill rate, the moved subjects and the preservation cost. "
                    "Writes nothing.")
    p.add_argument("workspace", metavar="WS", help="the workspace folder")
    p.add_argument("entry", type=_positive, metavar="ENTRY", help="the ledger entry id of the edit")
    p.add_argument("--sample", type=_positive, default=50, metavar="N",
                   help="same-type subjects swapped into each edited prompt (default 50; an edit's own audit uses 20)")
    p.add_argument("--neighbours", type=_positive, default=16, metavar="N",
                   help="key-space neighbours checked (default 16)")
    p.add_argument("--seed", type=int, default=0, help="the swap sample's seed (default 0)")
    p.add_argument("--subject-bank", default=None, metavar="FILE",
                   help="a subject bank JSON file (default: the shipped resources/subject_bank.json)")
    p.add_argument("--device", default="auto", help="device to load the model on (default: auto)")
    add_json_arg(p)
    p.set_defaults(func=cmd_audit)
