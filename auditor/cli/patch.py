"""``edit-auditor apply-patch``: apply a patch (``export --patch``) to a workspace as one entry.

The whole patch is checked before anything changes (its base fingerprint, every file inside the
patch, file and content hashes, every delta an editable matrix of the family with factors of its
exact shape); then its deltas are applied in order and recorded as ONE ledger entry (method
``patch``), which ``revert`` undoes as a whole. Any failure leaves the workspace as it was.

Example::

    edit-auditor export --workspace ws/ --patch --out eiffel.patch
    edit-auditor workspace init demo ws2/ && edit-auditor apply-patch eiffel.patch --workspace ws2/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from auditor.cli.common import add_json_arg, emit


def cmd_apply_patch(args: argparse.Namespace) -> int:
    from auditor.cli.ledger import head_line
    from auditor.run.patch import apply_patch_to_workspace
    from auditor.run.workspace import Workspace

    ws = Workspace.open(args.workspace, device=args.device)
    try:
        active_before = len(ws.ledger.active())
        entry = apply_patch_to_workspace(ws, args.patch, note=args.note)
        source = (entry.hparams or {}).get("source_fingerprint")
    finally:
        ws.close()
    emit(args, {"id": entry.id, "patch": str(args.patch), "method": entry.method, "params": entry.params,
                "delta_hash": entry.delta_hash, "fingerprint_before": entry.fingerprint_before,
                "fingerprint_after": entry.fingerprint_after, "ledger_head": entry.content_hash,
                # the patch's own fingerprint is reproduced exactly when the workspace had no edits
                "same_as_source": entry.fingerprint_after == source if active_before == 0 else None})
    if not args.json:
        print(head_line(entry.id, entry.content_hash), file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "apply-patch", help="apply a patch (export --patch) to a workspace, checked whole, as one entry",
        description="Check a whole patch (base fingerprint, files inside the patch, hashes, shapes of editable "
                    "matrices), then apply its deltas in order as one ledger entry that revert undoes as a whole. "
                    "Any failure leaves the workspace as it was.")
    p.add_argument("patch", type=Path, metavar="PATCH", help="the patch folder (written by export --patch)")
    p.add_argument("--workspace", "-w", required=True, metavar="DIR", help="the workspace folder")
    p.add_argument("--note", default=None, help="why (stored in the new entry)")
    p.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,cuda:N}",
                   help="where the model is rebuilt (default: auto)")
    add_json_arg(p)
    p.set_defaults(func=cmd_apply_patch)
