"""``edit-auditor workspace|ledger|revert|replay|export``: the ledger on the command line.

Commands (each takes ``--json`` and exits non-zero when it fails)::

    edit-auditor workspace init MODEL DIR [--dtype ...] [--device ...]
    edit-auditor ledger list   --workspace DIR [--limit N] [--status S]
    edit-auditor ledger show   --workspace DIR ID
    edit-auditor ledger search --workspace DIR TEXT
    edit-auditor ledger verify --workspace DIR [--expect-head HASH|KEPT]
                                                        # exit 1 when a hash, link, delta or the head is wrong
    edit-auditor ledger head   --workspace DIR [--json] # the current head, to keep elsewhere
    edit-auditor ledger schema --workspace DIR
    edit-auditor revert --workspace DIR ID [--note TEXT]
    edit-auditor replay --workspace DIR                 # exit 1 when the fingerprint differs
    edit-auditor export --workspace DIR --out OUT [--patch] [--dtype ...] [--max-shard-size 2GB]

Ledger commands read ``ledger.db`` only, opened read-only (a read-only workspace can be listed and
verified); revert, replay and export load the model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from auditor.cli.common import (add_json_arg, add_memory_args, add_model_args, emit, entry_id, memory_from_args,
                                positive_int, print_json, print_table, unicode_text)
from auditor.files import ReadError
from auditor.record.anchor import AnchorError
from auditor.record.export import ExportError
from auditor.record.ledger import LedgerError
from auditor.run.workspace import Workspace, WorkspaceError, open_ledger

ERRORS: tuple[type[BaseException], ...] = (WorkspaceError, LedgerError, ExportError, AnchorError, ReadError)
EXIT_CHECK_FAILED = 1
LIST_COLUMNS = ["id", "created_at", "kind", "status", "subject", "target_new", "layer", "efficacy",
                "ppl_ratio", "collapse_risk", "reverts"]


def _workspace_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", "-w", type=Path, required=True, metavar="DIR",
                        help="the workspace folder (made by `edit-auditor workspace init`)")


def _device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,cuda:N}",
                        help="where the model is rebuilt (default: auto)")
    add_memory_args(parser)


# ---------------------------------------------------------------- handlers


def cmd_workspace_init(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    ws = Workspace.init(args.model, args.directory, dtype=args.dtype, device=args.device,
                        memory=memory_from_args(args))
    emit(args, {"workspace": str(Path(args.directory).resolve()), **ws.ledger.genesis,
                "base_path": str(ws.lm.path), "ledger_head": ws.ledger.head_hash,
                "seconds": round(time.perf_counter() - t0, 3)})
    ws.close()
    return 0


def _print_entries(args: argparse.Namespace, entries: list[Any]) -> None:
    if args.json:
        print_json([e.summary for e in entries])
    elif entries:
        print_table([e.summary for e in entries], LIST_COLUMNS)
    else:
        print("(no entries)")


def cmd_ledger_list(args: argparse.Namespace) -> int:
    ledger = open_ledger(args.workspace, readonly=True)
    entries = ledger.entries(status=args.status, kind=args.kind)
    if args.limit:
        entries = entries[-args.limit:]
    _print_entries(args, entries)
    return 0


def cmd_ledger_show(args: argparse.Namespace) -> int:
    entry = open_ledger(args.workspace, readonly=True).get(args.id)
    record = entry.to_json()
    if args.json:
        print_json(record)
    else:
        print_table({k: v if not isinstance(v, (dict, list)) else _short_json(v) for k, v in record.items()})
    return 0


def _short_json(value: Any) -> str:
    import json

    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 200 else text[:197] + "..."


def cmd_ledger_search(args: argparse.Namespace) -> int:
    _print_entries(args, open_ledger(args.workspace, readonly=True).search(args.text, limit=args.limit))
    return 0


def head_line(entry_id: int, head_hash: str) -> str:
    """The line every command that appends prints (keep it: ``verify --expect-head`` checks it)."""
    return f"ledger head: entry {entry_id} {head_hash}"


def _where(problem: dict[str, Any]) -> str:
    return f"entry {problem['id']}" if problem["id"] is not None else problem.get("where", "ledger head")


def cmd_ledger_verify(args: argparse.Namespace) -> int:
    with open_ledger(args.workspace, readonly=True) as ledger:
        report = ledger.verify(expect_head=args.expect_head)
    if args.json:
        print_json(report)
    elif report["ok"]:
        print(f"ok: {report['entries']} entries, chain, deltas, head, settings, full-text index and watchlist intact; "
              f"head entry {report['head_id']} {report['head']}")
        expected = report["expected_head"]
        if expected:
            counter = f" (counter {expected['counter']})" if expected.get("counter") is not None else ""
            print(f"  expected head found: entry {expected['id']}{counter}, {expected['entries_after']} entries after it")
        for w in report["warnings"]:
            print(f"  warning: {_where(w)}: {w['reason']}")
    else:
        first = report["problems"][0]
        print(f"FAILED: {'first bad ' if first['id'] is not None else ''}{_where(first)}: {first['reason']}")
        for p in report["problems"][1:]:
            print(f"  {_where(p)}: {p['reason']}")
    return 0 if report["ok"] else EXIT_CHECK_FAILED


def cmd_ledger_head(args: argparse.Namespace) -> int:
    """The head file as it is now, for keeping elsewhere; ``verify --expect-head`` reads it back."""
    with open_ledger(args.workspace, readonly=True) as ledger:
        report = ledger.verify(check_deltas=False, check_index=False)
        anchor = ledger.anchor()
    if anchor is None or not report["ok"]:
        reason = report["reason"] or "ledger.head is missing"
        raise LedgerError(f"{args.workspace}: not printing a head for a ledger that does not verify ({reason}); "
                          "run `edit-auditor ledger verify`")
    if args.json:
        print_json(anchor.to_json())
    else:
        print(anchor.kept())
        print(f"entry {anchor.last_id}, counter {anchor.counter}, written {anchor.time}, "
              f"{'signed' if anchor.signature else 'not signed'}; keep this line (or --json) elsewhere and check "
              "it with `ledger verify --expect-head`", file=sys.stderr)
    return 0


def cmd_ledger_reanchor(args: argparse.Namespace) -> int:
    anchor = open_ledger(args.workspace).reanchor(args.expect_head)
    emit(args, {"head_file": "ledger.head", **anchor.to_json()})
    return 0


def cmd_ledger_schema(args: argparse.Namespace) -> int:
    ledger = open_ledger(args.workspace, readonly=True)
    if args.json:
        print_json({"migrations": ledger.schema_version, "schema": ledger.schema()})
    else:
        print(f"-- migrations: {', '.join(ledger.schema_version)}")
        print(ledger.schema())
    return 0


def cmd_revert(args: argparse.Namespace) -> int:
    ws = Workspace.open(args.workspace, device=args.device, memory=memory_from_args(args))
    entry = ws.revert(args.id, note=args.note)
    emit(args, {"id": entry.id, "reverts": entry.reverts, "param": entry.param,
                "fingerprint_before": entry.fingerprint_before, "fingerprint_after": entry.fingerprint_after,
                "content_hash": entry.content_hash, "ledger_head": entry.content_hash})
    if not args.json:
        print(head_line(entry.id, entry.content_hash), file=sys.stderr)
    ws.close()
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    ws = Workspace.open(args.workspace, device=args.device, memory=memory_from_args(args), check=False)
    t0 = time.perf_counter()
    report = ws.replay()
    report["seconds"] = round(time.perf_counter() - t0, 3)
    emit(args, report)
    if not report["match"] and not args.json:
        print("replay does NOT reproduce the recorded fingerprint", file=sys.stderr)
    ws.close()
    return 0 if report["match"] else EXIT_CHECK_FAILED


def _check_export_args(args: argparse.Namespace) -> None:
    """The checks that need no model, so a bad --out or --max-shard-size fails at once."""
    from auditor.record.export import check_target, parse_shard_size, require_verified_ledger

    if not args.patch:
        parse_shard_size(args.max_shard_size)
    ledger = open_ledger(args.workspace)
    try:
        base = ledger.get_setting("base_path")
        require_verified_ledger(ledger)
    finally:
        ledger.close()
    check_target(args.out, overwrite=args.overwrite, protected=[args.workspace, *([Path(base)] if base else [])])


def cmd_export(args: argparse.Namespace) -> int:
    _check_export_args(args)
    ws = Workspace.open(args.workspace, device=args.device, memory=memory_from_args(args))
    t0 = time.perf_counter()
    out = ws.export(args.out, patch=args.patch, dtype=args.dtype, max_shard_size=args.max_shard_size,
                    overwrite=args.overwrite)
    seconds = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    emit(args, {"out": str(out), "patch": args.patch, "bytes": size, "seconds": round(seconds, 3),
                "mb_per_s": round(size / 1e6 / seconds, 1) if seconds > 0 else None,
                "applied_edits": len(ws.ledger.active()), "ledger_head": ws.ledger.head_hash,
                "ledger_head_id": ws.ledger.head_id,
                "fingerprint": ws.fingerprint})
    ws.close()
    return 0


# ---------------------------------------------------------------- parsers


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``workspace``, ``ledger``, ``revert``, ``replay`` and ``export``."""
    p = subparsers.add_parser("workspace", help="create a workspace (base checkpoint + ledger)",
                              description="A workspace records every edit of one base checkpoint.")
    sub = p.add_subparsers(dest="workspace_command", metavar="ACTION", required=True)
    q = sub.add_parser("init", help="create a workspace on a checkpoint",
                       description="Load MODEL, record its path, fingerprint and dtype, create DIR/ledger.db.")
    add_model_args(q)
    q.add_argument("directory", metavar="DIR", type=Path, help="the new workspace folder (absent or empty)")
    add_json_arg(q)
    q.set_defaults(func=cmd_workspace_init)

    p = subparsers.add_parser("ledger", help="list, show, search and verify the ledger",
                              description="Read a workspace's ledger (no model is loaded).")
    sub = p.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)
    q = sub.add_parser("list", help="list entries, oldest first",
                       description="One line per entry: id, time, kind, status, subject, target, metrics.")
    _workspace_arg(q)
    q.add_argument("--limit", type=positive_int, default=None, metavar="N", help="only the last N entries")
    q.add_argument("--status", choices=("applied", "dry-run", "rejected", "failed"), default=None,
                   help="only entries with this status")
    q.add_argument("--kind", choices=("edit", "revert"), default=None, help="only edits or only reverts")
    add_json_arg(q)
    q.set_defaults(func=cmd_ledger_list)
    q = sub.add_parser("show", help="every field of one entry", description="Every column of entry ID.")
    _workspace_arg(q)
    q.add_argument("id", type=entry_id, metavar="ID", help="the entry id")
    add_json_arg(q)
    q.set_defaults(func=cmd_ledger_show)
    q = sub.add_parser("search", help="full-text search over subjects, prompts and targets",
                       description="Entries whose subject, prompt or targets contain every word of TEXT.")
    _workspace_arg(q)
    q.add_argument("text", type=unicode_text, metavar="TEXT", help="words to look for")
    q.add_argument("--limit", type=positive_int, default=100, metavar="N", help="at most N entries (default: 100)")
    add_json_arg(q)
    q.set_defaults(func=cmd_ledger_search)
    q = sub.add_parser("verify", help="recompute every hash, the chain and the delta files",
                       description="Exit 0 when intact; exit 1 naming the first entry that does not match.")
    _workspace_arg(q)
    q.add_argument("--expect-head", default=None, metavar="HASH|KEPT",
                   help="a head recorded earlier: a hash (printed by every append, in every export's metadata) "
                        "must be the head or an entry of the chain; what `ledger head` printed (its line, its "
                        "--json, or a file holding either) must also not be newer than ledger.head (its counter)")
    add_json_arg(q)
    q.set_defaults(func=cmd_ledger_verify)
    q = sub.add_parser("head", help="print the current head, to keep elsewhere",
                       description="Print the head file (entry, hash, counter, time, signature) of a ledger that "
                                   "verifies, as one line (or --json) to keep outside the workspace; "
                                   "`ledger verify --expect-head` checks it later.")
    _workspace_arg(q)
    add_json_arg(q)
    q.set_defaults(func=cmd_ledger_head)
    q = sub.add_parser("reanchor", help="rewrite a lost or damaged ledger.head from a head kept elsewhere",
                       description="Write ledger.head again, only when every entry verifies and HASH (printed "
                                   "by an append, in an export's metadata) is the ledger's head exactly.")
    _workspace_arg(q)
    q.add_argument("--expect-head", required=True, metavar="HASH", help="the ledger's head, as recorded elsewhere")
    add_json_arg(q)
    q.set_defaults(func=cmd_ledger_reanchor)
    q = sub.add_parser("schema", help="print the ledger's SQL schema and applied migrations",
                       description="The tables, indexes and triggers, as created by the migrations.")
    _workspace_arg(q)
    add_json_arg(q)
    q.set_defaults(func=cmd_ledger_schema)

    p = subparsers.add_parser("revert", help="undo an applied edit (recorded as a new entry)",
                              description="Rebuild the edited matrix from the base plus the remaining edits.")
    _workspace_arg(p)
    p.add_argument("id", type=entry_id, metavar="ID", help="the entry of the edit to undo")
    p.add_argument("--note", type=unicode_text, default=None, help="why (stored in the new entry)")
    _device_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_revert)

    p = subparsers.add_parser("replay", help="rebuild the model from base + ledger and compare fingerprints",
                              description="Exit 1 when the rebuilt model differs from the recorded fingerprint.")
    _workspace_arg(p)
    _device_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_replay)

    p = subparsers.add_parser("export", help="write the edited model as a Hugging Face folder (or a patch)",
                              description="Sharded safetensors whose metadata names the base fingerprint, "
                                          "the ledger head and the number of applied edits.")
    _workspace_arg(p)
    p.add_argument("--out", type=Path, required=True, metavar="OUT", help="the folder to create")
    p.add_argument("--patch", action="store_true",
                   help="write only the active deltas, their entries and a manifest")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="dtype of the exported weights (default: the workspace's)")
    p.add_argument("--max-shard-size", default="2GB", metavar="SIZE",
                   help="largest shard, e.g. 500MB or 2GB (default: 2GB)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    _device_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_export)
