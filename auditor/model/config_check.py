"""``config.json`` checked before any model is built: types, limits, and a size the weights can back.

transformers trusts a checkpoint's ``config.json``: ``null`` or a list gives an AttributeError deep
inside ``AutoConfig``, a string where a number belongs a TypeError in a constructor, and
``num_hidden_layers: 1000000000`` builds module after module until memory runs out. This module
reads the config as untrusted input (OWASP, "Input Validation Cheat Sheet": check type, range and
size on arrival, allow-list rather than deny-list) and refuses it with one line.

* the file is at most :data:`MAX_CONFIG_BYTES` and a JSON object;
* the size fields of the family (layers, widths, heads, vocabulary, positions) are integers within
  :data:`LIMITS`, and common scalar fields have their JSON types;
* the model the config describes cannot need more bytes than the weight files hold: a lower bound
  on its parameter count (embeddings plus two MLP matrices per layer, at 2 bytes each, the smallest
  unquantised dtype) must fit in the files' total size.

Example::

    check_config(json.loads(text), weight_bytes=sum(f.stat().st_size for f in files))
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from auditor.base import AuditorError

MAX_CONFIG_BYTES = 1 << 20  # real configs are a few KB
MIN_BYTES_PER_PARAM = 2  # float16 / bfloat16, the smallest dtype a safetensors folder holds here

# (alternative names, low, high): the first name present is checked
LIMITS: dict[str, tuple[tuple[str, ...], int, int]] = {
    "layers": (("num_hidden_layers", "n_layer"), 1, 1024),
    "hidden": (("hidden_size", "n_embd"), 1, 1 << 17),
    "intermediate": (("intermediate_size", "n_inner"), 1, 1 << 20),
    "heads": (("num_attention_heads", "n_head"), 1, 1024),
    "kv_heads": (("num_key_value_heads",), 1, 1024),
    "vocab": (("vocab_size",), 1, 1 << 22),
    "positions": (("max_position_embeddings", "n_positions", "n_ctx"), 1, 1 << 23),
    "rotary_dim": (("rotary_dim",), 1, 1 << 17),
}
NUMBER_FIELDS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "rope_theta", "initializer_range",
                 "rotary_pct", "attention_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop")
BOOL_FIELDS = ("tie_word_embeddings", "use_cache", "attention_bias", "mlp_bias", "use_parallel_residual")
STR_FIELDS = ("model_type", "torch_dtype", "dtype", "hidden_act", "activation_function")


class ConfigError(AuditorError, ValueError):
    """``config.json`` cannot describe a model we should build; ``str(e)`` is one line."""


def read_config(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, size- and shape-checked."""
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {size} bytes; a config.json is at most {MAX_CONFIG_BYTES} bytes")
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must hold a JSON object, not {_json_type(raw)}")
    return raw


def check_config(raw: dict[str, Any], *, weight_bytes: int | None = None, where: str = "config.json") -> dict[str, int]:
    """Check ``raw``; return the size fields found (``{"layers": 30, ...}``)."""
    for name in STR_FIELDS:
        if raw.get(name) is not None and not isinstance(raw[name], str):
            raise ConfigError(f"{where}: {name} must be a string, not {_json_type(raw[name])}")
    for name in BOOL_FIELDS:
        if raw.get(name) is not None and not isinstance(raw[name], bool):
            raise ConfigError(f"{where}: {name} must be true or false, not {_json_type(raw[name])}")
    for name in NUMBER_FIELDS:
        value = raw.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value < 0):
            raise ConfigError(f"{where}: {name} must be a finite non-negative number, not {_short(value)}")
    sizes = _sizes(raw, where)
    _check_heads(sizes, where)
    if weight_bytes is not None:
        _check_fits(sizes, weight_bytes, where)
    return sizes


def _sizes(raw: dict[str, Any], where: str) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for key, (names, low, high) in LIMITS.items():
        name = next((n for n in names if raw.get(n) is not None), None)
        if name is None:
            continue
        value = raw[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {name} must be an integer, not {_short(value)}")
        if not low <= value <= high:
            raise ConfigError(f"{where}: {name} = {_short(value)} is outside [{low}, {high}]")
        sizes[key] = value
    if "layers" not in sizes or "hidden" not in sizes:
        raise ConfigError(f"{where}: gives no layer count or hidden size (num_hidden_layers / hidden_size)")
    return sizes


def _check_heads(sizes: dict[str, int], where: str) -> None:
    heads, kv = sizes.get("heads"), sizes.get("kv_heads")
    if heads and sizes["hidden"] % heads:
        raise ConfigError(f"{where}: hidden size {sizes['hidden']} is not divisible by {heads} attention heads")
    if heads and kv and heads % kv:
        raise ConfigError(f"{where}: {heads} attention heads are not divisible by {kv} key/value heads")


def _check_fits(sizes: dict[str, int], weight_bytes: int, where: str) -> None:
    """A lower bound on the parameters the config implies must fit in the weight files."""
    hidden = sizes["hidden"]
    inter = sizes.get("intermediate") or 4 * hidden
    params = sizes["layers"] * 2 * hidden * inter + sizes.get("vocab", 0) * hidden
    need = params * MIN_BYTES_PER_PARAM
    if need > weight_bytes * 1.05 + (1 << 20):
        raise ConfigError(
            f"{where}: describes at least {params:.3g} parameters ({need / 1e9:.3g} GB), but the weight files "
            f"hold {weight_bytes / 1e9:.3g} GB; refusing to build it"
        )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."
