"""``edit-auditor apply-reviewed``: apply exactly the delta a flagged dry run recorded.

The command-line twin of the window's "Apply anyway" (see reviewed.py): re-running the edit with
``--allow-collapse`` would compute a new delta nobody reviewed; this applies the recorded one.

Example::

    edit-auditor edit --workspace ws/ --requests fact.json --dry-run     # flagged: entry 7
    edit-auditor apply-reviewed --workspace ws/ 7 --note "checked the neighbours by hand"
"""

from __future__ import annotations

import argparse
import sys

from auditor.cli.common import add_json_arg, add_memory_args, emit, entry_id, memory_from_args, unicode_text


def cmd_apply_reviewed(args: argparse.Namespace) -> int:
    from auditor.cli.ledger import head_line
    from auditor.run.reviewed import apply_reviewed
    from auditor.run.workspace import Workspace

    ws = Workspace.open(args.workspace, device=args.device, memory=memory_from_args(args))
    try:
        entry = apply_reviewed(ws, args.id, note=args.note)
    finally:
        ws.close()
    emit(args, {"id": entry.id, "applies_entry": args.id, "status": entry.status, "param": entry.param,
                "delta_hash": entry.delta_hash, "fingerprint_before": entry.fingerprint_before,
                "fingerprint_after": entry.fingerprint_after, "ledger_head": entry.content_hash})
    if not args.json:
        print(head_line(entry.id, entry.content_hash), file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "apply-reviewed", help="apply the delta a dry run (or a rejected edit) recorded, as reviewed",
        description="Apply exactly the delta recorded in entry ID (a dry run or an edit the collapse guard "
                    "rejected) to the weights it was computed on; the new entry records the same delta hash "
                    "and links to ID. Nothing is computed again.")
    p.add_argument("--workspace", "-w", required=True, metavar="DIR", help="the workspace folder")
    p.add_argument("id", type=entry_id, metavar="ID", help="the dry-run or rejected entry whose delta to apply")
    p.add_argument("--note", type=unicode_text, default=None, help="why (stored in the new entry)")
    add_memory_args(p)
    p.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,cuda:N}",
                   help="where the model is rebuilt (default: auto)")
    add_json_arg(p)
    p.set_defaults(func=cmd_apply_reviewed)
