"""Reading and writing one parameter of a model that accelerate has offloaded to CPU or disk.

A model loaded with ``device_map="auto"`` and a ``max_memory`` budget (accelerate's big-model
inference, used by ``transformers.from_pretrained``) keeps the parameters of the modules that do
not fit on the ``meta`` device; an ``AlignDevicesHook`` on each such module loads them from its
``weights_map`` (CPU tensors, or ``.dat`` memory maps in the offload folder, or the checkpoint's
own safetensors) for the length of one forward call. Everything that runs the model works
unchanged; only code that touches a weight directly must go through this module:

* :func:`read_param` gives the weight's values (materialised from the offload store when the
  module is offloaded; the parameter itself otherwise);
* :func:`write_param` writes new values where the hook will read them next: in place for a CPU
  store, a fresh ``.dat`` file in the offload folder for a disk store (never into the checkpoint's
  safetensors, which the index may point at: the entry is redirected to the new file).

Only the parameter asked for is materialised, so an edit holds one matrix, not the model.

Example::

    W = read_param(model, "model.layers.4.mlp.down_proj.weight")
    write_param(model, "model.layers.4.mlp.down_proj.weight", W + delta)
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from auditor.base import AuditorError

OFFLOAD_DIR_ATTR = "_edit_auditor_offload_folder"  # set on a model loaded with an offload folder


def _split(name: str) -> tuple[str, str]:
    module, _, leaf = name.rpartition(".")
    return module, leaf


def offload_hook(module: torch.nn.Module) -> Any | None:
    """The module's accelerate hook that holds offloaded weights, or None."""
    hook = getattr(module, "_hf_hook", None)
    for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
        if getattr(h, "offload", False) and getattr(h, "weights_map", None) is not None:
            return h
    return None


def is_offloaded(model: torch.nn.Module, name: str) -> bool:
    module_name, leaf = _split(name)
    tensor = model.get_submodule(module_name)._parameters.get(leaf)
    if tensor is None:
        tensor = model.get_submodule(module_name)._buffers.get(leaf)
    return tensor is not None and tensor.device.type == "meta"


def _store(model: torch.nn.Module, name: str) -> tuple[Any, str]:
    """(the offload store, the key in it) of an offloaded tensor."""
    module_name, leaf = _split(name)
    module = model.get_submodule(module_name)
    hook = offload_hook(module)
    if hook is None:
        raise RuntimeError(f"{name} is on the meta device but no accelerate hook holds its weights")
    wm = hook.weights_map  # PrefixedDataset(OffloadedWeightsLoader, prefix="<module>.")
    return wm.dataset, wm.prefix + leaf


def _tensor(model: torch.nn.Module, name: str) -> torch.Tensor:
    """The parameter or buffer ``name`` as the module holds it (on ``meta`` when offloaded)."""
    module_name, leaf = _split(name)
    module = model.get_submodule(module_name)
    tensor = module._parameters.get(leaf)
    if tensor is None:
        tensor = module._buffers.get(leaf)
    if tensor is None:
        raise KeyError(name)
    return tensor


def read_param(model: torch.nn.Module, name: str) -> torch.Tensor:
    """The values of parameter or buffer ``name`` (a fresh tensor when offloaded to disk)."""
    tensor = _tensor(model, name)
    if tensor.device.type != "meta":
        return tensor.detach()
    loader, key = _store(model, name)
    return loader[key]


def read_param_chunks(model: torch.nn.Module, name: str, chunk_bytes: int = 1 << 24) -> Iterator[torch.Tensor]:
    """The values of ``name`` as consecutive row blocks of about ``chunk_bytes`` each, in order.

    Concatenated, the blocks are ``read_param(model, name)``; an offloaded tensor is never
    materialised whole: a safetensors file is read through ``get_slice``, a ``.dat`` file through
    a memory map, a block at a time (what fingerprints and exports of big models need).
    """
    tensor = _tensor(model, name)
    shape = tuple(tensor.shape)
    rows = shape[0] if shape else 1
    row_bytes = max(1, tensor.numel() // max(rows, 1) * tensor.element_size())
    step = max(1, chunk_bytes // row_bytes)
    if tensor.device.type != "meta" or not shape:
        t = read_param(model, name) if tensor.device.type == "meta" else tensor.detach()
        for start in range(0, rows, step):
            yield t[start:start + step] if shape else t
        return
    loader, key = _store(model, name)
    if key in loader.state_dict:
        t = loader.state_dict[key]
        for start in range(0, rows, step):
            yield t[start:start + step]
        return
    info = loader.index[key]
    if info.get("safetensors_file") is not None:
        from safetensors import safe_open

        with safe_open(info["safetensors_file"], framework="pt", device="cpu") as f:
            part = f.get_slice(info.get("weight_name", key))
            for start in range(0, rows, step):
                block = part[start:start + step]
                yield block.to(getattr(torch, info["dtype"])) if "dtype" in info else block
        return
    import numpy as np

    np_dtype = {"bfloat16": "int16"}.get(info["dtype"], info["dtype"])
    mm = np.memmap(Path(loader.save_folder) / f"{key}.dat", dtype=np_dtype, shape=shape, mode="r")
    for start in range(0, rows, step):
        block = torch.from_numpy(np.array(mm[start:start + step]))
        yield block.view(torch.bfloat16) if info["dtype"] == "bfloat16" else block
    del mm


def give_freed_buffers_back() -> None:
    """Return freed memory to the system: a garbage collection, then glibc's ``malloc_trim``.

    Offloaded weights are materialised and dropped block after block; glibc keeps the freed
    arenas, so the resident size would count every block ever read. Harmless where ``malloc_trim``
    does not exist (another libc, another system).
    """
    import gc

    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]


_mallinfo2: Any = None


def live_bytes() -> int:
    """The bytes glibc's allocator has handed out and not had back (``mallinfo2``: arena bytes in
    use + mmapped blocks): what the process's tensors and objects need, without the freed blocks
    glibc keeps for reuse that resident memory counts. 0 where there is no glibc ``mallinfo2``."""
    global _mallinfo2
    if _mallinfo2 is None:
        try:
            fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallinfo2
            fn.restype = _MallInfo2
            _mallinfo2 = fn
        except (OSError, AttributeError):
            _mallinfo2 = False
    if not _mallinfo2:
        return 0
    info = _mallinfo2()
    return int(info.uordblks + info.hblkhd)


@torch.no_grad()
def write_param(model: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    """Set parameter ``name`` to ``value`` (cast to its dtype) wherever it lives."""
    if not is_offloaded(model, name):
        param = model.get_parameter(name)
        param.copy_(value.to(device=param.device, dtype=param.dtype))
        return
    from accelerate.utils import offload_weight

    loader, key = _store(model, name)
    dtype = model.get_parameter(name).dtype
    if key in loader.state_dict:  # CPU offload: the store holds the tensor itself
        loader.state_dict[key].copy_(value.to(dtype))
        return
    folder = loader.save_folder or getattr(model, OFFLOAD_DIR_ATTR, None)
    if folder is None:
        raise RuntimeError(f"{name} is offloaded to disk but the offload folder is unknown")
    # offload_weight replaces the index entry: one that pointed at the checkpoint's own safetensors
    # now points at the new .dat file in the offload folder (the checkpoint is never written)
    loader.save_folder = str(folder)
    offload_weight(value.detach().to("cpu", dtype).contiguous(), key, str(folder), index=loader.index)


def snapshot_params(model: torch.nn.Module, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Copies of the named weights wherever they live (an offloaded one read from its store), for
    :func:`restore_params` to put back."""
    return {n: read_param(model, n).clone() for n in names}


@torch.no_grad()
def restore_params(model: torch.nn.Module, saved: Mapping[str, torch.Tensor]) -> None:
    """Put a :func:`snapshot_params` back, in memory or in the offload store."""
    for name, tensor in saved.items():
        write_param(model, name, tensor)


class _Recording(Mapping):
    """A module's ``weights_map`` that notes which tensor it handed out for which module parameter."""

    def __init__(self, inner: Any, module: torch.nn.Module, seen: dict[int, tuple]):
        self.inner, self.module, self.seen = inner, module, seen
        self.dataset, self.prefix = inner.dataset, inner.prefix  # what read_param/write_param use

    def __getitem__(self, key: str) -> torch.Tensor:
        # accelerate may cast what it reads (a float32 file into a bfloat16 model): the module's
        # parameter, not this tensor, is what autograd will see, so the module is what is noted
        self.seen[(id(self.module), key)] = (self.module, key, self.dataset, self.prefix + key)
        return self.inner[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.inner)

    def __len__(self) -> int:
        return len(self.inner)


@contextmanager
def weights_not_saved(model: torch.nn.Module) -> Iterator[None]:
    """Let autograd keep the *name* of an offloaded weight, not the weight, for the backward pass.

    ``F.linear`` saves its weight to compute the input's gradient. Under accelerate's offload each
    block's weights are materialised for its forward call only, but the saved copy would keep every
    block above the edited one in memory until ``backward`` (the whole model, during v*). Inside
    this context (``torch.autograd.graph.saved_tensors_hooks``) a saved tensor that is, at that
    moment, an offloaded module's materialised parameter is replaced by its key in the offload
    store and read again when the backward pass needs it. A tensor that merely shares a freed
    weight's address is never mistaken for it: the module must hold it as its parameter right then.
    """
    hooks = [(m, h) for m in model.modules() if (h := offload_hook(m)) is not None]
    if not hooks:
        yield
        return
    seen: dict[tuple, tuple] = {}  # the offloaded modules materialised now (normally the one running)
    for module, hook in hooks:
        hook.weights_map = _Recording(hook.weights_map, module, seen)

    def pack(t: torch.Tensor) -> Any:
        if not t.numel() or t.device.type == "meta":
            return t
        for ident, (module, leaf, loader, key) in list(seen.items()):
            held = module._parameters.get(leaf)
            if held is None or held.device.type == "meta":  # that module's forward is over
                del seen[ident]
            elif held.dtype == t.dtype and held.device == t.device \
                    and held.untyped_storage().data_ptr() == t.untyped_storage().data_ptr():
                view = (tuple(t.shape), t.stride(), t.storage_offset() - held.storage_offset())
                return ("offloaded", loader, key, t.device, t.dtype, view)
        return t

    def unpack(saved: Any) -> torch.Tensor:
        if isinstance(saved, tuple):
            _, loader, key, device, dtype, (size, stride, offset) = saved
            weight = loader[key].to(device=device, dtype=dtype).contiguous()
            return weight.as_strided(size, stride, offset)
        return saved

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        for _module, hook in hooks:
            hook.weights_map = hook.weights_map.inner
        seen.clear()
        give_freed_buffers_back()  # the blocks read and dropped during forward and backward


def offload_folder_of(model: torch.nn.Module) -> Path | None:
    folder = getattr(model, OFFLOAD_DIR_ATTR, None)
    return Path(folder) if folder else None


class OffloadFolderError(AuditorError, ValueError):
    """The offload folder would overwrite something; one-line message."""


OFFLOAD_FILES = ("index.json", "replay")  # besides <tensor>.dat: accelerate's index, a replay's own folder


def check_offload_folder(folder: str | Path, *, protected: list[Path] = ()) -> Path:
    """Refuse an offload folder that would overwrite something: one inside (or holding) a
    checkpoint or workspace named in ``protected``, a file, or an existing folder that holds
    anything but an earlier offload (``index.json`` and ``*.dat``). Returns the resolved path.

    (A local check; the product's general output-path policy will take it over.)
    """
    path = Path(folder).expanduser().resolve()
    for p in protected:
        p = Path(p).expanduser().resolve()
        if path == p or p in path.parents or path in p.parents:
            raise OffloadFolderError(f"{folder}: the offload folder may not be inside or around {p}")
    if path.exists() and not path.is_dir():
        raise OffloadFolderError(f"{folder}: exists and is not a folder")
    if path.is_dir():
        strangers = [c.name for c in path.iterdir() if c.name not in OFFLOAD_FILES and c.suffix != ".dat"]
        if strangers:
            raise OffloadFolderError(f"{folder}: not empty and not an offload folder (holds {strangers[0]!r}); "
                                     "name a new or empty folder")
    return path
