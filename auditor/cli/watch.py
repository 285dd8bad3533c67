"""``edit-auditor watch``: the workspace's watchlist (answers that must not change; see record/watch.py).

Commands::

    edit-auditor watch add    --workspace DIR --prompt TEXT --answer TEXT [--note TEXT]
    edit-auditor watch list   --workspace DIR [--check] [--history] [--json]
    edit-auditor watch remove --workspace DIR ID [--note TEXT]

``add``, ``remove`` and ``list`` read and write ``ledger.db`` only; ``list --check`` loads the
workspace's model and checks every item (and every applied edit) on it now. ``list`` exits 1
when the watchlist's hash chain does not verify, ``--check`` also when an item fails.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from auditor.cli.common import add_memory_args, emit, entry_id, memory_from_args, print_json, print_table, unicode_text
from auditor.record.ledger import LedgerError
from auditor.record.watch import WatchError, Watchlist
from auditor.run.workspace import WorkspaceError, open_ledger

ERRORS: tuple[type[BaseException], ...] = (WatchError, WorkspaceError, LedgerError)
EXIT_CHECK_FAILED = 1


def cmd_add(args: argparse.Namespace) -> int:
    with open_ledger(args.workspace) as ledger:
        item = Watchlist(ledger).add(args.prompt, args.answer, note=args.note)
        emit(args, {"id": item.id, "prompt": item.prompt, "answer": item.answer, "note": item.note})
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    with open_ledger(args.workspace) as ledger:
        row = Watchlist(ledger).remove(args.id, note=args.note)
        emit(args, {"removed": row["item"], "prompt": row["prompt"], "answer": row["answer"], "event": row["id"]})
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with open_ledger(args.workspace, readonly=True) as ledger:
        wl = Watchlist(ledger)
        rows = wl.history() if args.history else [vars(i) for i in wl.items()]
        verified = wl.verify()
        whole = ledger.verify(check_deltas=False, check_index=False)  # the head file pins the list's head
        if verified["ok"] and not whole["ok"]:
            verified = {**verified, "ok": False, "reason": f"the ledger does not verify: {whole['reason']}"}
    report = None
    if args.check:
        from auditor.record.watch import check
        from auditor.run.workspace import Workspace

        ws = Workspace.open(args.workspace, device=args.device, memory=memory_from_args(args))
        try:
            report = check(ws)
        finally:
            ws.close()
        failed = {f["item"] for f in report["failed"]}
        for r in rows:
            r["holds"] = r["id"] not in failed
    if args.json:
        print_json({"items": rows, "verify": verified, "check": report})
    else:
        columns = ["id", "action", "item", "prompt", "answer", "created_at"] if args.history else \
            ["id", "prompt", "answer", *(["holds"] if report else []), "note"]
        print_table(rows, columns) if rows else print("(the watchlist is empty)")
        if report:
            print(f"edits still holding: {report['edits_held']}/{report['edits']}"
                  + (f" (lost: {', '.join(map(str, report['edits_lost']))})" if report["edits_lost"] else ""))
        if not verified["ok"]:
            print(f"watchlist does not verify: {verified['reason']}")
    bad = not verified["ok"] or (report is not None and (report["failed"] or report["edits_lost"]))
    return EXIT_CHECK_FAILED if bad else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("watch", help="answers that must not change across edits (the watchlist)",
                              description="Manage the workspace's watchlist: prompts whose answers must "
                                          "not change. It is checked, with every applied edit of the "
                                          "workspace, after each new edit; the result is in the entry.")
    sub = p.add_subparsers(dest="watch_command", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--workspace", "-w", type=Path, required=True, metavar="DIR",
                       help="the workspace folder (made by `edit-auditor workspace init`)")
        q.add_argument("--json", action="store_true", help="print machine-readable JSON")

    q = sub.add_parser("add", help="watch an answer", description="Add a prompt and the answer the model "
                                                                   "must keep giving (its greedy continuation "
                                                                   "must start with it).")
    common(q)
    q.add_argument("--prompt", type=unicode_text, required=True, help="the complete prompt")
    q.add_argument("--answer", type=unicode_text, required=True, help="the answer that must not change")
    q.add_argument("--note", type=unicode_text, default=None, help="why it is watched")
    q.set_defaults(func=cmd_add)

    q = sub.add_parser("remove", help="stop watching an item", description="Remove an item (a new event; "
                                                                            "the history keeps it).")
    common(q)
    q.add_argument("id", type=entry_id, metavar="ID", help="the item's id (see `watch list`)")
    q.add_argument("--note", type=unicode_text, default=None, help="why it is removed")
    q.set_defaults(func=cmd_remove)

    q = sub.add_parser("list", help="list the watched items", description="The watched items (or with "
                                                                           "--history every add/remove event), "
                                                                           "the chain verified.")
    common(q)
    q.add_argument("--check", action="store_true", help="load the model and check every item now")
    q.add_argument("--history", action="store_true", help="every add/remove event instead of the items")
    add_memory_args(q)
    q.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,cuda:N}",
                   help="where the model is rebuilt for --check (default: auto)")
    q.set_defaults(func=cmd_list)
