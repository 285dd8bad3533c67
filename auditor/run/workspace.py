"""A workspace: a base checkpoint, a ledger and its deltas, which together are the current model.

Layout of a workspace folder::

    ledger.db            the SQLite ledger (WAL), see ledger.py
    deltas/<sha256>.safetensors
    workspace.lock       held while an edit or a revert runs (one writer at a time)

The base checkpoint is never modified. :meth:`Workspace.open` loads it, refuses it
if its fingerprint is not the one recorded at :meth:`Workspace.init`, then applies
the applied, not reverted deltas in ledger order with :func:`deltas.apply_delta`.
A revert is a new entry; the parameter it touches is rebuilt from the base tensor
(read from the checkpoint's safetensors) plus the remaining deltas on it in ledger
order: the same operations, in the same order, as a replay from scratch, so revert
and replay give identical bits.

Several processes may use one workspace: edits and reverts take the workspace lock
and first bring their in-memory model up to the ledger's head (applying what other
processes appended), so the recorded fingerprints describe one consistent history.

Example::

    ws = Workspace.init("demo", "runs/eiffel")
    result, entry = ws.edit(request)
    ws.revert(entry.id)
    assert ws.replay()["match"]
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from auditor.base import AuditorError
from auditor.engine.deltas import apply_delta
from auditor.files import atomic_folder, describe_os_error, protection
from auditor.model.checkpoint import CheckpointError, LoadedModel, fingerprint_model, load_model, resolve_dtype
from auditor.model.offload import give_freed_buffers_back, write_param
from auditor.record.ledger import Entry, Ledger, LedgerError, entry_facts, entry_params  # noqa: F401 (entry_facts: re-exported)
from auditor.run.recheck import recheck_later

if TYPE_CHECKING:
    from auditor.model.requests import EditRequest
    from auditor.run.batch import BatchResult
    from auditor.run.edit import Editor, EditResult

log = logging.getLogger(__name__)

LEDGER_FILE = "ledger.db"
LOCK_FILE = "workspace.lock"
REPLAY_OFFLOAD = "replay"  # subfolder of an offload folder where a replay's fresh model offloads
REPLAY_CPU_BUDGET = 1 << 20  # the weights a replay's fresh model keeps in memory when it may offload
FORMAT = 1

# EditResult.diagnostics / .metrics keys that get their own ledger column
DIAGNOSTIC_COLUMNS = ("denominator", "denominator_raw", "numerator_norm", "update_norm", "weight_norm",
                      "key_cosine")
METRIC_COLUMNS = ("efficacy", "target_prob", "generalization", "locality", "portability",
                  "prefixed_efficacy", "ppl_before", "ppl_after", "ppl_ratio")


class WorkspaceError(AuditorError, RuntimeError):
    """A workspace cannot be created, opened or changed; ``str(e)`` is a one-line explanation."""


def describe(error: OSError) -> str:
    return str(error) if isinstance(error, AuditorError) else describe_os_error(error)


def _empty_folder(folder: Path) -> list[str]:
    """An empty folder may be replaced by a new workspace (it holds nothing to lose)."""
    return []


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


class Workspace:
    """Base checkpoint + ledger + deltas = the current model (``self.lm``)."""

    def __init__(self, directory: Path, lm: LoadedModel, ledger: Ledger) -> None:
        self.directory = Path(directory)
        self.lm = lm
        self.memory: dict[str, Any] = {}  # max_memory / offload_folder the model was loaded with
        self.ledger = ledger
        self.fingerprint = lm.fingerprint  # of self.lm.model as it is now
        self._synced_id = 0  # the last ledger entry reflected in self.lm.model
        self._editor: Editor | None = None
        # called as hook(ws, result) -> dict after an applied edit, before its entry is written;
        # the dicts go into the entry's metrics (the watchlist check always runs first: watch.py)
        self.after_apply: list[Callable[["Workspace", "EditResult"], dict[str, Any]]] = []

    # ------------------------------------------------------------ create and open

    @classmethod
    def init(cls, model: str | Path, directory: str | Path, *, dtype: str = "float32",
             device: str = "auto", progress: Any = None, memory: dict[str, Any] | None = None) -> "Workspace":
        """A new workspace in ``directory`` (absent or empty) on the checkpoint ``model``.

        ``memory``: ``max_memory`` / ``offload_folder`` for :func:`load_model` (accelerate's offload).
        Atomic: the ledger is built in a hidden sibling folder and renamed to ``directory`` only when
        complete, so a killed or failed init (a full disk) leaves nothing under that name that blocks
        a retry; the next init removes the partial folders of processes that are gone.
        """
        directory = Path(directory).expanduser().absolute()
        why = protection(directory)
        if (directory / LEDGER_FILE).exists():
            raise WorkspaceError(f"{directory}: already a workspace (open it instead)")
        if why:
            raise WorkspaceError(f"{directory}: {why}; choose another folder for the workspace")
        if directory.is_symlink() or (directory.exists() and (not directory.is_dir() or any(directory.iterdir()))):
            raise WorkspaceError(f"{directory}: exists and is not an empty folder")
        lm = load_model(model, dtype=dtype, device=device, progress=progress, **(memory or {}))
        source = "demo" if str(model) == "demo" else str(Path(model).expanduser().resolve())
        genesis = {
            "format": FORMAT,
            "base_fingerprint": lm.fingerprint,  # of the model as loaded, in this dtype
            "base_source": source,
            "dtype": dtype_name(lm.dtype),
            "architecture": type(lm.model).__name__,
            "family": lm.spec.family,
        }

        def build(tmp: Path) -> None:
            ledger = Ledger.create(tmp / LEDGER_FILE, genesis)
            try:
                ledger.set_setting("base_path", str(Path(lm.path).resolve()))
            finally:
                ledger.close()

        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
            atomic_folder(directory, build, overwrite=True, listed=_empty_folder, what="workspace")
        except OSError as e:
            raise WorkspaceError(f"{directory}: the workspace could not be created ({describe(e)}); "
                                 "nothing was left behind, retry when the cause is fixed") from None
        ws = cls(directory, lm, Ledger(directory / LEDGER_FILE))
        ws.memory = dict(memory or {})
        return ws

    @classmethod
    def open(cls, directory: str | Path, *, device: str = "auto", base: str | Path | None = None,
             check: bool = True, progress: Any = None, memory: dict[str, Any] | None = None) -> "Workspace":
        """Load the base, check its fingerprint, apply the active deltas in ledger order.

        ``base`` points at the checkpoint when it has moved (it must still match).
        With ``check`` the result must have the fingerprint the ledger recorded last.
        """
        directory = Path(directory)
        ledger = open_ledger(directory)
        genesis = ledger.genesis
        where = base or ledger.get_setting("base_path") or genesis["base_source"]
        if base is None and not Path(str(where)).exists() and genesis["base_source"] == "demo":
            where = "demo"
        try:
            lm = load_model(where, dtype=genesis["dtype"], device=device, progress=progress, **(memory or {}))
        except CheckpointError as e:
            raise WorkspaceError(f"{directory}: cannot load the base checkpoint: {e}") from None
        if lm.fingerprint != genesis["base_fingerprint"]:
            raise WorkspaceError(
                f"{directory}: the base checkpoint {where} is not the one this workspace was built on "
                f"(fingerprint {lm.fingerprint[:19]}..., recorded {genesis['base_fingerprint'][:19]}...); "
                "refusing to open. Restore the original checkpoint, or pass the path of an unchanged copy."
            )
        if base is not None:
            ledger.set_setting("base_path", str(Path(lm.path).resolve()))
        ws = cls(directory, lm, ledger)
        ws.memory = dict(memory or {})
        ws._sync()
        if check:
            state = ws.state()
            if not state["match"]:
                raise WorkspaceError(
                    f"{directory}: the model rebuilt from the ledger has fingerprint {state['fingerprint'][:19]}..., "
                    f"but the ledger recorded {state['recorded'][:19]}...; run `edit-auditor ledger verify`"
                )
        return ws

    def close(self) -> None:
        self.ledger.close()

    # ------------------------------------------------------------ state

    @property
    def base_fingerprint(self) -> str:
        return self.ledger.genesis["base_fingerprint"]

    def recorded_fingerprint(self, upto: int | None = None) -> str:
        """The model fingerprint the ledger recorded last (the base's while nothing is recorded)."""
        sql = "SELECT fingerprint_after FROM entries WHERE fingerprint_after IS NOT NULL AND fingerprint_after != ''"
        params: list[Any] = []
        if upto is not None:
            sql += " AND id <= ?"
            params.append(int(upto))
        row = self.ledger.db.execute(sql + " ORDER BY id DESC LIMIT 1", params).fetchone()
        return row[0] if row else self.base_fingerprint

    def state(self) -> dict[str, Any]:
        """The in-memory model's fingerprint against the one recorded for the same ledger entry."""
        recorded = self.recorded_fingerprint(self._synced_id)
        return {"fingerprint": self.fingerprint, "recorded": recorded, "match": self.fingerprint == recorded,
                "head": self._synced_id}

    @property
    def editor(self) -> "Editor":
        """The :class:`~auditor.run.edit.Editor` on ``self.lm`` (assign one to set a guard or a probe)."""
        if self._editor is None:
            from auditor.run.edit import Editor

            self._editor = Editor(self.lm)
            self._editor.use_calibration(self.base_fingerprint)  # a workspace is calibrated for its base
        return self._editor

    @editor.setter
    def editor(self, editor: "Editor") -> None:
        if editor.lm is not self.lm:
            raise WorkspaceError("the editor must work on this workspace's model (Editor(ws.lm, ...))")
        if editor.thresholds_source is None:
            editor.use_calibration(self.base_fingerprint)
        self._editor = editor

    def _weights_changed(self) -> None:
        self.fingerprint = fingerprint_model(self.lm.model)
        if self._editor is not None:
            self._editor.invalidate()

    # ------------------------------------------------------------ locking and catching up

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive use of the workspace across processes (released by the OS if we die).

        Every operation that appends runs under it, so it is also where a ledger that does not
        verify is refused, before any model work is done (:meth:`Ledger.check_appendable`; the
        append itself checks again).
        """
        path = self.directory / LOCK_FILE
        with open(path, "a+b") as f:
            _lock_file(f)
            try:
                try:
                    self.ledger.check_appendable()
                except LedgerError as e:
                    raise WorkspaceError(str(e)) from None
                yield
            finally:
                _unlock_file(f)

    def _sync(self) -> int:
        """Apply the entries appended (by anyone) since the model was last brought up to date."""
        news = self.ledger.entries(after=self._synced_id)
        changed = 0
        for e in news:
            if e.kind == "edit" and e.status == "applied" and e.delta_hash:
                apply_delta(self.lm.model, self.ledger.load_delta(e.delta_hash))
                changed += 1
            elif e.kind == "revert" and entry_params(e):
                for param in entry_params(e):
                    self._rebuild(param, upto=e.id)
                changed += 1
            self._synced_id = e.id
        if changed:
            self._weights_changed()
        return changed

    # ------------------------------------------------------------ edits

    def edit(self, request: "EditRequest", **editor_kwargs: Any) -> tuple["EditResult", Entry]:
        """Run the engine on the current model and record the attempt, whatever its outcome.

        ``editor_kwargs`` go to :meth:`Editor.edit` (``method``, ``key_mode``, ``hparams``,
        ``dry_run``, ``allow_collapse``, ``progress``, ``cancel``, ...). A cancelled edit is not
        recorded (:class:`EditCancelled` propagates); an edit the engine refuses outright
        (:class:`EditFailed`) is recorded as failed, then re-raised with ``.entry`` set.
        """
        from auditor.run.edit import EditFailed

        note = editor_kwargs.pop("note", None)
        with self._locked():
            self._sync()
            try:
                result = self.editor.edit(request, **editor_kwargs)
            except EditFailed as e:
                e.entry = self.ledger.append({  # type: ignore[attr-defined]
                    **_request_fields(request), "status": "failed", "error": str(e), "note": note,
                    "method": editor_kwargs.get("method", "rome"), "key_mode": editor_kwargs.get("key_mode"),
                    "device": str(self.lm.device), "dtype": dtype_name(self.lm.dtype),
                    "fingerprint_before": self.fingerprint, "fingerprint_after": self.fingerprint,
                })
                self._synced_id = e.entry.id  # type: ignore[attr-defined]
                raise
            with self._undone_on_failure(result):
                if result.status == "applied":
                    self._after_apply(result)
                entry = self._append_result(result, note=note)
        return result, entry

    @contextlib.contextmanager
    def _undone_on_failure(self, result: Any) -> Iterator[None]:
        """Recording an applied result (watchlist, hooks, delta file, ledger row) either succeeds or
        takes the edit back out of the model: every matrix it touched is rebuilt from its base tensor
        and the ledger's active deltas, so the weights in memory never hold an edit the ledger lacks."""
        try:
            yield
        except BaseException:
            if result.status == "applied" and result.delta is not None:
                for param in result.delta.params:
                    self._rebuild(param, upto=self._synced_id)
                self._weights_changed()
            raise

    def _after_apply(self, result: "EditResult") -> None:
        """The watchlist check (record/watch.py), then ``self.after_apply`` hooks, into ``result.metrics``."""
        from auditor.record.watch import check

        result.metrics["watch"] = check(self)
        for hook in self.after_apply:
            result.metrics.update(hook(self, result))

    def edit_batch(self, requests: "list[EditRequest]", **batch_kwargs: Any) -> tuple["BatchResult", Entry]:
        """Run one batch (MEMIT, AlphaEdit, ...; see :func:`auditor.run.batch.edit_batch`) on the current
        model and record it as one entry listing its requests.

        AlphaEdit's key memory is taken from the ledger (the applied, not reverted AlphaEdit batches)
        before the batch runs. A batch that fails (:class:`~auditor.run.batch.BatchFailed`) or is
        cancelled leaves the weights and the ledger as they were.
        """
        note = batch_kwargs.pop("note", None)
        with self._locked():
            self._sync()
            self.editor.key_memory = self.key_memory()
            result = self.editor.edit_batch(requests, **batch_kwargs)
            with self._undone_on_failure(result):
                if result.status == "applied":
                    self._after_apply(result)  # type: ignore[arg-type]  # the watchlist, hooks
                fields = batch_fields(result)
                fields["note"] = note
                self._check_recorded_state(fields)
                entry = self.ledger.append(fields, delta=result.delta)
            self._synced_id = entry.id
            self.fingerprint = result.fingerprint_after or fingerprint_model(self.lm.model)
        return result, entry

    def key_memory(self, upto: int | None = None) -> dict[str, torch.Tensor]:
        """AlphaEdit's running sum of K K^T per parameter: every applied, not reverted AlphaEdit
        batch's recorded keys (ids <= ``upto``), summed in ledger order (float64)."""
        from auditor.engine.alphaedit import key_memory_add
        from auditor.engine.deltas import DeltaSet

        memory: dict[str, torch.Tensor] = {}
        for e in self.ledger.active_at(upto if upto is not None else self._synced_id):
            if e.row.get("method") == "alphaedit":
                delta = self.ledger.load_delta(e.delta_hash)
                if isinstance(delta, DeltaSet):
                    key_memory_add(memory, delta)
        return memory

    def record(self, result: "EditResult", *, note: str | None = None) -> Entry:
        """Record a result computed on ``self.lm`` outside :meth:`edit` (e.g. by a GUI worker).

        Refused when other processes appended in the meantime, since the edit was then
        computed on a model that is not the ledger's current one.
        """
        with self._locked():
            head = self.ledger.head()
            if head is not None and head.id != self._synced_id:
                raise WorkspaceError(
                    f"the ledger moved on (entry {head.id}) since this model was loaded; "
                    "reopen the workspace and edit again"
                )
            return self._append_result(result, note=note)

    def _append_result(self, result: "EditResult", *, note: str | None) -> Entry:
        fields = result_fields(result)
        fields["note"] = note
        self._check_recorded_state(fields)
        entry = self.ledger.append(fields, delta=result.delta)
        self._synced_id = entry.id
        self.fingerprint = result.fingerprint_after or fingerprint_model(self.lm.model)
        return entry

    def _check_recorded_state(self, fields: dict[str, Any]) -> None:
        """Refuse an entry whose recorded model states are not what happened: it must start from the
        state the workspace is in (``self.fingerprint``, measured), an applied change must change
        it, anything else must leave it as it was."""
        before, after = fields.get("fingerprint_before"), fields.get("fingerprint_after")
        if before is None or after is None:
            return
        wrong = None
        if before != self.fingerprint:
            wrong = f"it was computed on the model state {before[:19]}..., not the current {self.fingerprint[:19]}..."
        elif fields.get("status") == "applied" and after == before:
            wrong = "it is recorded as applied but the weights did not change"
        elif fields.get("status") != "applied" and after != before:
            wrong = f"it is recorded as {fields.get('status')} but the weights changed"
        if wrong:
            raise WorkspaceError(f"not recording this {fields.get('kind', 'edit')}: {wrong}; nothing was appended")

    # ------------------------------------------------------------ revert

    def revert(self, entry_id: int, *, note: str | None = None) -> Entry:
        """Undo an applied edit: a new entry; the parameter rebuilt from base + remaining deltas."""
        with self._locked():
            self._sync()
            target = self.ledger.get(entry_id)
            if target.kind != "edit":
                raise WorkspaceError(f"entry {entry_id} is a {target.kind}, not an edit; only edits can be reverted")
            if target.status != "applied" or not target.delta_hash:
                raise WorkspaceError(
                    f"entry {entry_id} was not applied (status {target.status}); there is nothing to revert"
                )
            if entry_id in self.ledger.reverted_ids():
                raise WorkspaceError(f"entry {entry_id} is already reverted")
            before = self.fingerprint
            head = self._synced_id
            params = entry_params(target)
            for param in params:
                self._rebuild(param, upto=head, skip={entry_id})
            self._weights_changed()
            if not params or self.fingerprint == before:
                raise WorkspaceError(
                    f"reverting entry {entry_id} would not change the weights (it names no parameter its delta "
                    "changes, or the rebuilt parameters are unchanged); nothing was recorded. "
                    "Run `edit-auditor ledger verify`")
            recheck = recheck_later(self.lm, self.ledger, entry_id, upto=head)
            entry = self.ledger.append({
                **{k: target.row[k] for k in ("method", "key_mode", "layer", "param", "request", "subject",
                                              "prompt", "target_new", "target_true", "delta_hash",
                                              "delta_file_sha256")},
                **{k: target[k] for k in ("requests", "n_requests", "params") if target.row.get(k) is not None},
                "kind": "revert", "status": "applied", "reverts": entry_id, "note": note,
                "device": str(self.lm.device), "dtype": dtype_name(self.lm.dtype),
                "fingerprint_before": before, "fingerprint_after": self.fingerprint,
                "diagnostics": {"recheck": recheck},
            })
            self._synced_id = entry.id
            return entry

    def _rebuild(self, param: str, *, upto: int, skip: set[int] = frozenset()) -> None:
        """``param`` <- base tensor, then every active delta on it (ids <= upto) in ledger order."""
        active = [e for e in self.ledger.active_at(upto) if param in entry_params(e) and e.id not in skip]
        write_param(self.lm.model, param, self.base_tensor(param))  # offloaded or not (model.offload)
        for e in active:
            apply_delta(self.lm.model, self.ledger.load_delta(e.delta_hash), params=[param])

    def base_tensor(self, name: str) -> torch.Tensor:
        """The base checkpoint's tensor ``name`` in the workspace dtype, read from its safetensors."""
        from safetensors import safe_open

        dtype = resolve_dtype(self.ledger.genesis["dtype"])
        folder = Path(self.lm.path)
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            shard = json.loads(index.read_text()).get("weight_map", {}).get(name)
            files = [folder / shard] if shard else []
        else:
            files = sorted(folder.glob("*.safetensors"))
        for f in files:
            with safe_open(str(f), framework="pt") as st:
                if name in st.keys():
                    return st.get_tensor(name).to(dtype)
        # names that transformers renames on load: take the tensor from a fresh load instead
        log.info("%s not found under that name in %s; loading the base model to read it", name, folder)
        fresh = load_model(folder, dtype=dtype, device="cpu")
        return fresh.model.get_parameter(name).detach().clone()

    # ------------------------------------------------------------ replay, verify, export

    def _replay_memory(self) -> dict[str, Any]:
        """The workspace's memory options for a second, fresh model (its own offload subfolder)."""
        memory = dict(self.memory)
        if memory.get("offload_folder") is not None:
            memory["offload_folder"] = Path(memory["offload_folder"]) / REPLAY_OFFLOAD
            # a replay never runs the model (it writes deltas and hashes weights): nothing of it needs
            # to stay in memory while the workspace's own model is alive
            memory["max_memory"] = {"cpu": REPLAY_CPU_BUDGET}
        return memory

    def replay(self, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Rebuild the model from the base checkpoint and the ledger alone; compare fingerprints.

        Returns ``{"fingerprint", "recorded", "match", "applied", "head"}``.
        """
        head = self.ledger.head()
        upto = head.id if head else 0
        genesis = self.ledger.genesis
        fresh = load_model(self.lm.path, dtype=genesis["dtype"], device=self.lm.device, tokenizer=self.lm.tokenizer,
                           **self._replay_memory())
        if fresh.fingerprint != genesis["base_fingerprint"]:
            raise WorkspaceError(f"{self.lm.path}: the base checkpoint has changed since the workspace was created")
        active = self.ledger.active_at(upto)
        for i, e in enumerate(active):
            apply_delta(fresh.model, self.ledger.load_delta(e.delta_hash))
            if progress:
                progress(i + 1, len(active))
        fp = fingerprint_model(fresh.model)
        del fresh
        give_freed_buffers_back()
        recorded = self.recorded_fingerprint(upto)
        return {"fingerprint": fp, "recorded": recorded, "match": fp == recorded, "applied": len(active),
                "head": upto, "key_memory": key_memory_fingerprint(self.key_memory(upto))}

    def verify(self) -> dict[str, Any]:
        """The ledger's :meth:`~auditor.record.ledger.Ledger.verify`: hashes, chain and delta files."""
        return self.ledger.verify()

    def export(self, out: str | Path, *, patch: bool = False, dtype: str | None = None,
               max_shard_size: int | str = "2GB", progress: Callable[[int, int], None] | None = None,
               overwrite: bool = False) -> Path:
        """A Hugging Face folder of the current model (or, with ``patch``, only the deltas)."""
        from auditor.record.export import export_model, export_patch

        if patch:
            return export_patch(self, out, overwrite=overwrite)
        return export_model(self, out, dtype=dtype, max_shard_size=max_shard_size, progress=progress,
                            overwrite=overwrite)


# ---------------------------------------------------------------- helpers


def open_ledger(directory: str | Path, *, readonly: bool = False) -> Ledger:
    """The ledger of the workspace in ``directory`` (without loading any model).

    ``readonly``: for commands that only read (list, show, search, verify): SQLite's read-only
    mode, so a read-only folder or mount works and nothing (lock, WAL, head file) is written.
    """
    path = Path(directory) / LEDGER_FILE
    if not path.is_file():
        raise WorkspaceError(f"{directory}: not a workspace (no {LEDGER_FILE}); create one with `edit-auditor workspace init`")
    try:
        return Ledger(path, readonly=readonly)
    except LedgerError as e:
        raise WorkspaceError(str(e)) from None


def key_memory_fingerprint(memory: dict[str, torch.Tensor]) -> str:
    """Fingerprint of AlphaEdit's key memory (names, dtypes, shapes and bytes)."""
    from auditor.model.checkpoint import fingerprint_tensors

    return fingerprint_tensors(sorted(memory.items()))


def batch_fields(result: "BatchResult") -> dict[str, Any]:
    """The ledger columns of one batch: its requests, per-layer diagnostics, per-request metrics."""
    reqs = result.requests
    summary = result.summary_diagnostics()
    params = result.params
    return {
        "kind": "edit", "status": result.status, "error": result.error, "method": result.method,
        "key_mode": None, "layer": result.layers[-1] if result.layers else None,
        "param": params[0] if len(params) == 1 else None, "params": params,
        "requests": [r.to_json() for r in reqs], "n_requests": len(reqs),
        # newline-joined so that full-text search finds the batch by any of its requests
        "subject": "\n".join(r.subject for r in reqs), "prompt": "\n".join(r.text for r in reqs),
        "target_new": "\n".join(r.target_new for r in reqs),
        "target_true": "\n".join(r.target_true or "" for r in reqs),
        "hparams": result.hparams,
        "update_norm": summary["update_norm"], "weight_norm": summary["weight_norm"],
        **{k: result.metrics.get(k) for k in METRIC_COLUMNS},
        "collapse_risk": bool(result.collapse_risk), "collapse_reasons": list(result.collapse_reasons or []),
        "diagnostics": result.diagnostics,
        "metrics": {**result.metrics, "per_request": result.per_request},
        "timings": dict(result.timings or {}), "device": result.device, "dtype": result.dtype,
        "fingerprint_before": result.fingerprint_before, "fingerprint_after": result.fingerprint_after,
    }


def _request_fields(request: "EditRequest") -> dict[str, Any]:
    return {"request": request.to_json(), "subject": request.subject, "prompt": request.text,
            "target_new": request.target_new, "target_true": request.target_true}


def result_fields(result: "EditResult") -> dict[str, Any]:
    """The ledger columns of one engine result (everything it reports)."""
    diag, metrics = dict(result.diagnostics or {}), dict(result.metrics or {})
    return {
        **_request_fields(result.request),
        "kind": "edit", "status": result.status, "error": result.error,
        "method": result.method, "key_mode": result.key_mode, "layer": result.layer,
        "param": result.delta.param if result.delta is not None else None,
        "hparams": result.hparams,
        **{k: diag.get(k) for k in DIAGNOSTIC_COLUMNS},
        **{k: metrics.get(k) for k in METRIC_COLUMNS},
        "collapse_risk": bool(result.collapse_risk), "collapse_reasons": list(result.collapse_reasons or []),
        "diagnostics": diag, "metrics": metrics, "timings": dict(result.timings or {}),
        "device": result.device, "dtype": result.dtype,
        "fingerprint_before": result.fingerprint_before, "fingerprint_after": result.fingerprint_after,
    }


def _lock_file(f: Any) -> None:
    if os.name == "nt":  # pragma: no cover - Windows
        import msvcrt

        f.seek(0)
        while True:
            try:
                msvcrt.locking(f.fileno(), msvcrt.LK_LOCK, 1)
                return
            except OSError:
                continue
    import fcntl

    fcntl.flock(f.fileno(), fcntl.LOCK_EX)


def _unlock_file(f: Any) -> None:
    if os.name == "nt":  # pragma: no cover - Windows
        import msvcrt

        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(f.fileno(), fcntl.LOCK_UN)
