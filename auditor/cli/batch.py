"""``edit-auditor edit --method memit|alphaedit``: the requests in batches, one update per batch.

Called by ``cli_edit.cmd_edit`` for the batch methods. The requests are cut into batches of
``--batch-size`` (default: all of them in one batch) applied one after another, each seeing the
earlier ones. Every request gets the same JSON line as a ROME edit (plus ``batch``,
``batch_index``, ``layers``), every batch one summary line (``"summary": "batch"``) with the
per-layer diagnostics. With ``--workspace`` each batch is one ledger entry listing its requests.

A batch that cannot be edited (a target without tokens, one prompt asked for two answers, a NaN)
stops the run with a one-line error naming the batch and the request; earlier batches stay
applied (and recorded), the failed one changes nothing.

Example::

    edit-auditor edit demo --method memit --requests facts.json --batch-size 10 --json
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from auditor.cli.common import fail, memory_from_args


def run_batches(args: argparse.Namespace, requests: list, kwargs: dict[str, Any],
                emit: Callable[[dict[str, Any]], None], progress: Any) -> None:
    """Apply ``requests`` in batches with ``args.method``; ``emit`` each JSON line."""
    from auditor.cli.common import load_from_args
    from auditor.run.batch import BatchFailed
    from auditor.run.edit import Editor

    size = args.batch_size or len(requests)
    if args.independent:
        raise fail("--independent measures single edits; it does not apply to --method "
                   f"{args.method} (use --batch-size 1 for one request per update)")
    kwargs = {k: v for k, v in kwargs.items() if k != "key_mode"}
    batches = [requests[i:i + size] for i in range(0, len(requests), size)]
    if args.workspace:
        from auditor.run.workspace import Workspace

        ws = Workspace.open(args.workspace, device=args.device, memory=memory_from_args(args))
        editor = ws.editor
        ws.editor.collateral = getattr(args, "audit_config", ws.editor.collateral)
        run = lambda batch: ws.edit_batch(batch, progress=progress, **kwargs)  # noqa: E731
    else:
        editor = Editor(load_from_args(args))
        editor.collateral = getattr(args, "audit_config", editor.collateral)
        run = lambda batch: (editor.edit_batch(batch, progress=progress, **kwargs), None)  # noqa: E731
    editor.check_requests(requests)  # every request fits the model's context before the first batch runs
    for b, batch in enumerate(batches, start=1):
        try:
            result, entry = run(batch)
        except BatchFailed as e:
            raise fail(f"batch {b} of {len(batches)} ({len(batch)} requests): {e}") from None
        entry_id = getattr(entry, "id", None)
        for record in result.records(b):
            progress.done()
            emit({**record, "entry_id": entry_id})
        emit({**result.summary(b), "entry_id": entry_id})
