"""Exports that carry their provenance: a Hugging Face folder, or a patch of deltas.

:func:`export_model` writes config, generation config, tokenizer and sharded
safetensors (``model-0000X-of-0000N.safetensors`` + ``model.safetensors.index.json``;
one ``model.safetensors`` when it fits one shard) of a workspace's current model.
Every shard's metadata, and the index's ``metadata``, carry ``format=pt`` and::

    edit_auditor.base_fingerprint    the base checkpoint the edits were made on
    edit_auditor.ledger_head         content hash of the ledger's last entry
    edit_auditor.applied_edits       how many edits are in the weights
    edit_auditor.export_fingerprint  fingerprint of the exported tensors

Tied weights are written once, as ``save_pretrained`` does (transformers'
``remove_tied_weights_from_state_dict``). Everything is written into a hidden
sibling folder ``.<name>.partial-<pid>-*`` and renamed at the end, so a killed export
never leaves anything under the final name; the next export to that name removes
the partial folders of processes that are gone. Shards are streamed tensor by
tensor in the safetensors format (:func:`write_safetensors`), with progress every
16 MiB.

Before anything is written the ledger must verify (its chain, deltas and head), and
the target must be safe: never the workspace, the base checkpoint, a folder that
holds either of them, or (with ``overwrite``) anything but an earlier export.

:func:`export_patch` writes only the active deltas, their ledger entries and a
manifest, for a reviewer who has the base; :func:`apply_patch` applies one.

Example::

    export_model(ws, "out/eiffel-italy", dtype="bfloat16", max_shard_size="200MB")
    export_patch(ws, "out/eiffel-italy.patch")
    apply_patch(load_model("demo"), "out/eiffel-italy.patch")["match"]   # True
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from auditor.base import AuditorError
from auditor.engine.deltas import apply_delta, load_delta
from auditor.model.checkpoint import LoadedModel, fingerprint_model, fingerprint_tensors, resolve_dtype
from auditor.model.offload import read_param
from auditor.record.ledger import app_version, fsync_dir, sha256_file

if TYPE_CHECKING:
    from auditor.record.ledger import Ledger
    from auditor.run.workspace import Workspace

PATCH_FORMAT = "edit-auditor-patch"
PATCH_VERSION = 1
PROVENANCE_FILE = "edit_auditor_provenance.json"


class ExportError(AuditorError, RuntimeError):
    """An export cannot be written or a patch cannot be applied; one-line message."""


MIN_SHARD_BYTES = 1 << 20  # a smaller --max-shard-size is a typo, not a wish for thousands of files
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
CHUNK_BYTES = 1 << 24  # progress granularity of the tensor writes


def parse_shard_size(value: int | str) -> int:
    """``"2GB"``, ``"500MB"``, ``"1.5GiB"`` or a number of bytes -> bytes (at least 1 MiB)."""
    import re

    if isinstance(value, bool):
        raise ExportError(f"--max-shard-size {value!r}: expected a size such as 500MB or 2GB")
    if isinstance(value, int):
        size = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(value), flags=re.IGNORECASE)
        if not m:
            raise ExportError(f"--max-shard-size {str(value)[:40]!r}: expected a size such as 500MB or 2GB")
        size = int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").upper()])
    if size < MIN_SHARD_BYTES:
        raise ExportError(f"--max-shard-size {value!r}: must be at least 1MiB")
    return size


def export_state_dict(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The model's tensors as they are saved: tied ones once, on the CPU, in ``dtype``.

    A tensor of a module accelerate offloaded stays a ``meta`` placeholder (its shape and dtype,
    no memory): :func:`export_tensor` reads it when its bytes are written, one at a time.
    """
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    state = remove_tied_weights_from_state_dict(dict(model.state_dict()), model)
    out = {}
    for name, t in state.items():
        t = t.detach()
        if t.device.type != "meta":
            t = t.to("cpu")
        out[name] = (t.to(dtype) if t.is_floating_point() else t).contiguous()
    return out


def export_tensor(model: torch.nn.Module, tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """``tensors[name]``, read from the offload store first when it is a placeholder."""
    t = tensors[name]
    if t.device.type != "meta":
        return t
    real = read_param(model, name).to("cpu")
    return (real.to(t.dtype) if real.is_floating_point() else real).contiguous()


def provenance(ws: "Workspace") -> dict[str, str]:
    """The metadata every shard and the index carry (str -> str, as safetensors wants)."""
    genesis = ws.ledger.genesis
    return {
        "format": "pt",
        "edit_auditor.base_fingerprint": genesis["base_fingerprint"],
        "edit_auditor.base_source": str(genesis.get("base_source", "")),
        "edit_auditor.ledger_head": ws.ledger.head_hash,
        "edit_auditor.ledger_head_id": str(ws.ledger.head_id),
        "edit_auditor.ledger_entries": str(len(ws.ledger)),
        "edit_auditor.applied_edits": str(len(ws.ledger.active())),
        "edit_auditor.model_fingerprint": ws.fingerprint,
        "edit_auditor.app_version": app_version(),
    }


def export_model(ws: "Workspace", out: str | Path, *, dtype: str | None = None,
                 max_shard_size: int | str = "2GB", progress: Callable[[int, int], None] | None = None,
                 overwrite: bool = False) -> Path:
    """Write the workspace's current model as a Hugging Face folder ``out``; return its path.

    ``progress(bytes_written, total_bytes)`` is called after each shard.
    """
    from huggingface_hub import split_torch_state_dict_into_shards

    out = Path(out).absolute()
    shard_bytes = parse_shard_size(max_shard_size)
    check_target(out, overwrite=overwrite, protected=protected_folders(ws))
    require_verified_ledger(ws.ledger)
    model = ws.lm.model
    torch_dtype = resolve_dtype(dtype or ws.lm.dtype)
    with torch.no_grad():
        tensors = export_state_dict(model, torch_dtype)
    meta = provenance(ws)
    meta["edit_auditor.dtype"] = str(torch_dtype).replace("torch.", "")
    load = partial(export_tensor, model, tensors)  # offloaded tensors: read one at a time, hashed, written
    meta["edit_auditor.export_fingerprint"] = fingerprint_tensors(tensors.items(), load)
    split = split_torch_state_dict_into_shards(tensors, max_shard_size=shard_bytes,
                                               filename_pattern="model{suffix}.safetensors")
    total = sum(t.numel() * t.element_size() for t in tensors.values())

    def write(tmp: Path) -> None:
        config = copy.deepcopy(model.config)
        config.dtype = torch_dtype
        config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            try:
                model.generation_config.save_pretrained(tmp)
            except ValueError:  # a base whose generation config transformers finds inconsistent
                src = Path(ws.lm.path) / "generation_config.json"
                if src.is_file():
                    shutil.copyfile(src, tmp / src.name)
        ws.lm.tokenizer.save_pretrained(tmp)
        done = [0]

        def wrote(n: int) -> None:
            done[0] += n
            if progress:
                progress(done[0], total)

        for filename, names in split.filename_to_tensors.items():
            write_safetensors(tmp / filename, {n: tensors[n] for n in names}, meta, on_bytes=wrote, load=load)
        index = {"metadata": {"total_size": total, **meta}, "weight_map": dict(sorted(split.tensor_to_filename.items()))}
        _write_json(tmp / "model.safetensors.index.json", index)
        _write_json(tmp / PROVENANCE_FILE, {**meta, "entries": [e.to_json() for e in ws.ledger.active()]})

    return _atomic_folder(out, write, overwrite)


def export_patch(ws: "Workspace", out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the active deltas, their entries (``entries.json``) and ``manifest.json`` to ``out``."""
    out = Path(out).absolute()
    check_target(out, overwrite=overwrite, protected=protected_folders(ws))
    require_verified_ledger(ws.ledger)
    active = ws.ledger.active()
    meta = provenance(ws)
    genesis = ws.ledger.genesis

    from auditor.record.ledger import entry_params

    def write(tmp: Path) -> None:
        (tmp / "deltas").mkdir()
        items = []
        for e in active:
            src = ws.ledger.delta_path(e.delta_hash)
            dst = tmp / "deltas" / src.name
            if not dst.exists():
                shutil.copyfile(src, dst)
                _fsync(dst)
            items.append({"entry": e.id, "param": e.param, "params": entry_params(e), "delta_hash": e.delta_hash,
                          "file": f"deltas/{src.name}", "file_sha256": sha256_file(dst)})
        _write_json(tmp / "entries.json", [e.to_json() for e in active])
        _write_json(tmp / "manifest.json", {
            "format": PATCH_FORMAT, "version": PATCH_VERSION,
            "base_fingerprint": genesis["base_fingerprint"], "base_source": genesis.get("base_source"),
            "dtype": genesis["dtype"], "ledger_head": meta["edit_auditor.ledger_head"],
            "applied_edits": len(active), "fingerprint": ws.fingerprint,
            "app_version": meta["edit_auditor.app_version"], "deltas": items,
        })

    return _atomic_folder(out, write, overwrite)


def apply_patch(base_model: LoadedModel | torch.nn.Module, patch_dir: str | Path, *,
                check_base: bool = True) -> dict[str, Any]:
    """Apply a patch's deltas, in order, to the base model (in place).

    Checks the base fingerprint (when given a :class:`LoadedModel`) and every delta's hashes.
    Returns ``{"fingerprint", "expected", "match", "applied"}``.
    """
    patch_dir = Path(patch_dir)
    try:
        manifest = json.loads((patch_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ExportError(f"{patch_dir}: not a readable patch (manifest.json: {e})") from None
    if manifest.get("format") != PATCH_FORMAT:
        raise ExportError(f"{patch_dir}: not an Edit Auditor patch")
    model = base_model.model if isinstance(base_model, LoadedModel) else base_model
    if isinstance(base_model, LoadedModel) and check_base and base_model.fingerprint != manifest["base_fingerprint"]:
        raise ExportError(
            f"{patch_dir}: made for base {manifest['base_fingerprint'][:19]}..., "
            f"but this model is {base_model.fingerprint[:19]}... (same checkpoint and dtype {manifest['dtype']}?)"
        )
    deltas = []
    for item in manifest["deltas"]:  # check everything before touching the weights
        path = patch_dir / item["file"]
        if not path.is_file() or sha256_file(path) != item["file_sha256"]:
            raise ExportError(f"{path}: missing or changed (entry {item['entry']})")
        delta = load_delta(path)
        if delta.content_hash() != item["delta_hash"]:
            raise ExportError(f"{path}: does not match its delta hash (entry {item['entry']})")
        deltas.append(delta)
    for delta in deltas:
        apply_delta(model, delta)
    fp = fingerprint_model(model)
    if isinstance(base_model, LoadedModel):
        base_model.extra["patch"] = str(patch_dir)
    return {"fingerprint": fp, "expected": manifest["fingerprint"], "match": fp == manifest["fingerprint"],
            "applied": len(deltas)}


# ---------------------------------------------------------------- files


def require_verified_ledger(ledger: "Ledger") -> None:
    """Refuse to export from a ledger that does not verify (chain, deltas, head)."""
    report = ledger.verify()
    if not report["ok"]:
        raise ExportError(f"the ledger does not verify ({report['reason']}); refusing to export. "
                          "Run `edit-auditor ledger verify`")


def protected_folders(ws: "Workspace") -> list[Path]:
    """Folders an export must never replace or contain: the workspace and the base checkpoint."""
    return [Path(ws.directory), Path(ws.lm.path)]


def is_export(folder: Path) -> bool:
    """An earlier model export (its provenance file) or patch (its manifest)."""
    if (folder / PROVENANCE_FILE).is_file():
        return True
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == PATCH_FORMAT


def _inside(a: Path, b: Path) -> bool:
    """``a`` is ``b`` or lies inside it (both resolved)."""
    return a == b or b in a.parents


def check_target(out: Path, *, overwrite: bool, protected: list[Path]) -> None:
    """Refuse an ``--out`` that would destroy something or cannot be a folder; create its parent."""
    out = Path(out).absolute()
    real = out.resolve()
    for folder in protected:
        folder = Path(folder).resolve()
        if _inside(real, folder) or _inside(folder, real):
            raise ExportError(f"{out}: is, holds or lies inside {folder} (the workspace or the base checkpoint); "
                              "choose another --out")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ExportError(f"{out}: exists and is not a folder; choose another --out")
    if out.exists():
        if not overwrite:
            raise ExportError(f"{out}: already exists; choose another --out or overwrite it")
        if not is_export(out):
            raise ExportError(f"{out}: is not an earlier Edit Auditor export; refusing to overwrite it")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"{out}: cannot create its folder {parent} ({e.strerror})") from None
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"{out}: its folder {parent} is not writable")


def _remove_stale_partials(out: Path) -> None:
    """``.<name>.partial-<pid>-*`` folders left by exports whose process is gone."""
    for p in out.parent.glob(f".{out.name}.partial-*"):
        pid = p.name[len(f".{out.name}.partial-"):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _atomic_folder(out: Path, write: Callable[[Path], None], overwrite: bool) -> Path:
    """Run ``write(tmp)`` in a hidden sibling folder, then rename it to ``out``."""
    _remove_stale_partials(out)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    except OSError as e:
        raise ExportError(f"{out}: cannot write in {out.parent} ({e.strerror})") from None
    try:
        write(tmp)
        fsync_dir(tmp)
        if out.exists():
            if not overwrite or not is_export(out):
                raise ExportError(f"{out}: appeared while exporting; not replaced")
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.replace(old / out.name)
            tmp.replace(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.replace(out)
        fsync_dir(out.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], *,
                      on_bytes: Callable[[int], None] | None = None,
                      load: Callable[[str], torch.Tensor] | None = None) -> None:
    """Write ``tensors`` as one safetensors file, streamed (no second copy of the shard in memory).

    The format (github.com/huggingface/safetensors): an 8-byte little-endian header length, a JSON
    header ``{name: {dtype, shape, data_offsets}, "__metadata__": {...}}`` padded with spaces to a
    multiple of 8, then the tensors' bytes back to back. ``on_bytes(n)`` after every chunk written.
    ``load(name)`` gives a tensor's bytes when ``tensors`` holds only its shape (a ``meta``
    placeholder): the header needs no data, so a shard is written one tensor in memory at a time.
    """
    import struct

    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    names = sorted(tensors)
    for name in names:
        t = tensors[name]
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in names:
            t = load(name) if load is not None and tensors[name].device.type == "meta" else tensors[name]
            flat = t.contiguous().reshape(-1).view(torch.uint8)  # (nbytes,)
            for start in range(0, flat.numel(), CHUNK_BYTES):
                piece = flat[start:start + CHUNK_BYTES].numpy()
                f.write(piece.data)
                if on_bytes:
                    on_bytes(len(piece))
        f.flush()
        os.fsync(f.fileno())


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    _fsync(path)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
