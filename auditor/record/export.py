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
from dataclasses import dataclass
import os
import shutil
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from auditor.base import AuditorError
from auditor.files import OutputError, ReadError, atomic_folder, check_output, check_regular, owned_files, read_regular
from auditor.engine.deltas import AnyDelta, apply_delta, load_delta
from auditor.model.checkpoint import LoadedModel, fingerprint_model, fingerprint_tensors, resolve_dtype
from auditor.model.offload import read_param, restore_params, snapshot_params
from auditor.record.ledger import app_version, sha256_file

if TYPE_CHECKING:
    from auditor.record.ledger import Ledger
    from auditor.run.workspace import Workspace

PATCH_FORMAT = "edit-auditor-patch"
PATCH_VERSION = 1
PROVENANCE_FILE = "edit_auditor_provenance.json"
MAX_MANIFEST_BYTES = 64 << 20  # a manifest or provenance file larger than this is not one of ours


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
    out = check_target(out, overwrite=overwrite, protected=protected_folders(ws))
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
        _write_json(tmp / PROVENANCE_FILE, {**meta, "entries": [e.to_json() for e in ws.ledger.active()],
                                            "files": _files_in(tmp)})

    return _atomic_folder(out, write, overwrite)


def export_patch(ws: "Workspace", out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the active deltas, their entries (``entries.json``) and ``manifest.json`` to ``out``."""
    out = Path(out).absolute()
    out = check_target(out, overwrite=overwrite, protected=protected_folders(ws))
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
            "files": _files_in(tmp),
        })

    return _atomic_folder(out, write, overwrite)


@dataclass
class CheckedPatch:
    """A patch read and checked whole: every delta loaded, hashed and fitted to the model."""

    folder: Path
    manifest: dict[str, Any]
    deltas: list[AnyDelta]  # in the manifest's order
    entries: list[dict[str, Any]]  # the source ledger's entries (entries.json), for the record

    @property
    def params(self) -> list[str]:
        return list(dict.fromkeys(p for d in self.deltas for p in d.params))


def _patch_error(folder: Path, text: str) -> ExportError:
    return ExportError(f"{folder}: {text}; the patch was not applied")


def _patch_json(folder: Path, name: str) -> Any:
    try:
        raw = read_regular(folder / name, limit=MAX_MANIFEST_BYTES, what=name)
        return json.loads(raw)
    except (ReadError, ValueError, RecursionError) as e:
        raise _patch_error(folder, f"not a readable patch ({name}: {' '.join(str(e).split())[:200]})") from None


def _inside_patch(folder: Path, name: Any) -> Path:
    """``folder/name`` for a relative ``name`` that stays inside ``folder`` (symbolic links resolved)."""
    if not isinstance(name, str) or not name or "\x00" in name or os.path.isabs(name):
        raise _patch_error(folder, f"a delta file name {str(name)[:80]!r} is not a relative path")
    path = folder / name
    if not _is_inside(Path(os.path.realpath(path)), Path(os.path.realpath(folder))):
        raise _patch_error(folder, f"the delta file {name[:80]!r} lies outside the patch")
    return path


def _is_inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def _check_part(folder: Path, model: torch.nn.Module, spec: Any, part: Any, entry: Any) -> None:
    """``part`` changes an editable matrix of this family, with factors of exactly its shape."""
    n_layers = spec.n_layers(model.config)
    editable = {spec.weight_name(i) for i in range(n_layers)}
    if part.param not in editable:
        raise _patch_error(folder, f"entry {entry}: {part.param[:120]!r} is not an editable matrix of this "
                                   f"{spec.family} model")
    weight = model.get_parameter(part.param)
    out_dim, in_dim = (weight.shape[1], weight.shape[0]) if spec.transposed else tuple(weight.shape)
    if bool(part.transposed) != bool(spec.transposed):
        raise _patch_error(folder, f"entry {entry}: the delta's orientation does not match {part.param}")
    tensors = [part.full] if part.full is not None else [part.left, part.right]
    if any(t is None or not t.is_floating_point() for t in tensors):
        raise _patch_error(folder, f"entry {entry}: the delta on {part.param} is incomplete or not floating point")
    if part.full is not None:
        ok = tuple(part.full.shape) == (out_dim, in_dim)
    else:
        left, right = part.left, part.right
        ok = (left.dim() == right.dim() and left.dim() in (1, 2) and left.shape[0] == out_dim
              and right.shape[0] == in_dim and (left.dim() == 1 or left.shape[1] == right.shape[1]))
    if not ok:
        shapes = " x ".join(str(tuple(t.shape)) for t in tensors)
        raise _patch_error(folder, f"entry {entry}: the delta's shape {shapes} does not fit {part.param} "
                                   f"{tuple(weight.shape)}")
    if not all(bool(torch.isfinite(t).all()) for t in tensors):
        raise _patch_error(folder, f"entry {entry}: the delta on {part.param} holds NaN or infinite values")


def check_patch(lm: LoadedModel, patch_dir: str | Path, *, base_fingerprint: str | None = None) -> CheckedPatch:
    """Read and check a whole patch against ``lm`` before anything changes.

    The manifest and entries (bounded, regular files); the base fingerprint (``base_fingerprint``,
    default the model's); every delta file: a relative path inside the patch, its file hash, its
    content hash, every part an editable matrix of the family with factors of exactly its shape and
    finite values. Raises :class:`ExportError` naming the first problem.
    """
    folder = Path(patch_dir).expanduser().absolute()
    if not folder.is_dir():
        raise _patch_error(folder, "no such patch folder")
    manifest = _patch_json(folder, "manifest.json")
    if not isinstance(manifest, dict) or manifest.get("format") != PATCH_FORMAT:
        raise _patch_error(folder, "not an Edit Auditor patch (manifest.json)")
    if manifest.get("version") != PATCH_VERSION:
        raise _patch_error(folder, f"patch format version {str(manifest.get('version'))[:20]} is not {PATCH_VERSION}")
    expected = base_fingerprint or lm.fingerprint
    if manifest.get("base_fingerprint") != expected:
        raise _patch_error(folder, f"made for base {str(manifest.get('base_fingerprint'))[:19]}..., but this model's "
                                   f"base is {expected[:19]}... (same checkpoint and dtype {str(manifest.get('dtype'))[:20]}?)")
    items = manifest.get("deltas")
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise _patch_error(folder, "manifest.json has no list of deltas")
    entries = _patch_json(folder, "entries.json") if (folder / "entries.json").exists() else []
    if not isinstance(entries, list):
        raise _patch_error(folder, "entries.json is not a list of entries")
    limit = 8 * sum(p.numel() for p in lm.model.parameters()) + (1 << 20)  # float64 of the whole model at most
    deltas = []
    for item in items:
        entry = str(item.get("entry"))[:20]
        path = _inside_patch(folder, item.get("file"))
        try:
            check_regular(path, limit=limit, what="delta file")
        except ReadError as e:
            raise _patch_error(folder, f"entry {entry}: {e}") from None
        if sha256_file(path) != item.get("file_sha256"):
            raise _patch_error(folder, f"entry {entry}: {item.get('file')} does not match its file hash")
        try:
            delta = load_delta(path)
        except Exception as e:  # a file that is not a delta: safetensors/JSON errors of many kinds
            raise _patch_error(folder, f"entry {entry}: {item.get('file')} is not a delta "
                                       f"({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None
        if delta.content_hash() != item.get("delta_hash"):
            raise _patch_error(folder, f"entry {entry}: {item.get('file')} does not match its delta hash")
        for part in delta.parts_on(None):
            _check_part(folder, lm.model, lm.spec, part, entry)
        deltas.append(delta)
    if not deltas:
        raise _patch_error(folder, "the patch holds no deltas")
    return CheckedPatch(folder, manifest, deltas, [e for e in entries if isinstance(e, dict)])


@torch.no_grad()
def apply_checked(model: torch.nn.Module, patch: CheckedPatch) -> None:
    """Apply a checked patch's deltas in order; on any failure every touched weight is restored."""
    saved = snapshot_params(model, patch.params)  # offloaded weights: read from their store
    try:
        for delta in patch.deltas:
            apply_delta(model, delta)
    except BaseException:
        restore_params(model, saved)
        raise


def apply_patch(base_model: LoadedModel, patch_dir: str | Path, *, check_base: bool = True) -> dict[str, Any]:
    """Check a whole patch (:func:`check_patch`), then apply its deltas, in order, to the base model.

    Returns ``{"fingerprint", "expected", "match", "applied"}``. Nothing changes when a check fails.
    """
    if not isinstance(base_model, LoadedModel):
        raise ExportError("apply_patch needs a LoadedModel (its fingerprint and architecture are checked)")
    patch = check_patch(base_model, patch_dir, base_fingerprint=None if check_base else
                        json.loads(read_regular(Path(patch_dir) / "manifest.json", limit=MAX_MANIFEST_BYTES,
                                                what="manifest.json")).get("base_fingerprint"))
    apply_checked(base_model.model, patch)
    fp = fingerprint_model(base_model.model)
    base_model.extra["patch"] = str(patch.folder)
    return {"fingerprint": fp, "expected": patch.manifest.get("fingerprint"),
            "match": fp == patch.manifest.get("fingerprint"), "applied": len(patch.deltas)}


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


def listed_files(folder: Path) -> list[str] | None:
    """The files an earlier export (its provenance file) or patch (its manifest) in ``folder`` wrote.

    None when ``folder`` is neither, or is one from before exports listed their files: such a
    folder is never replaced, so an overwrite cannot delete a file the program did not write.
    """
    for name in (PROVENANCE_FILE, "manifest.json"):
        try:
            raw = read_regular(folder / name, limit=MAX_MANIFEST_BYTES, what=name, missing_ok=True)
            data = json.loads(raw) if raw is not None else None
        except (ReadError, ValueError):
            return None
        if data is None:
            continue
        if not isinstance(data, dict) or (name == "manifest.json" and data.get("format") != PATCH_FORMAT):
            return None
        files = data.get("files")
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            return None
        return [*files, name]
    return None


def is_export(folder: Path) -> bool:
    """An earlier model export or patch of this program that lists its files."""
    return listed_files(folder) is not None


def check_target(out: Path, *, overwrite: bool, protected: list[Path]) -> Path:
    """Refuse an ``--out`` that would destroy something or cannot be a folder (:mod:`auditor.files`)."""
    try:
        target = check_output(out, what="export --out", folder=True, overwrite=overwrite, protected=protected)
    except OutputError as e:
        raise ExportError(str(e)) from None
    if target.exists() and owned_files(target, listed_files) is None:
        raise ExportError(f"{target}: is not an earlier Edit Auditor export, or holds files its manifest does not "
                          "list; refusing to replace it; choose another --out")
    return target


def _files_in(folder: Path) -> list[str]:
    """Every file under ``folder``, relative, sorted (what a manifest lists)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _atomic_folder(out: Path, write: Callable[[Path], None], overwrite: bool) -> Path:
    """Run ``write(tmp)`` in a hidden sibling folder, then rename it to ``out`` (:func:`atomic_folder`)."""
    return atomic_folder(out, write, overwrite=overwrite, listed=listed_files, what="export")


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
