"""Canonical JSON and the hashes taken over it: the form every record of the ledger is hashed in.

``canonical_json`` sorts keys, drops spaces, keeps UTF-8, writes tensors and numpy values as the
lists they hold and NaN/inf as strings; ``sha256_text`` tags its digest with the algorithm
(``"sha256:..."``). ``utc_now`` and ``operator`` stamp who wrote a record and when.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, UTF-8 kept: the form every hash is taken over."""
    return json.dumps(_finite(_plain(value)), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _plain(value: Any) -> Any:
    """Tensors, numpy scalars, paths and tuples as the JSON values they stand for."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [_plain(v) for v in items]
    if hasattr(value, "tolist") and callable(value.tolist):  # torch / numpy
        return _plain(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value


def sha256_text(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: keep them as the strings "nan", "inf", "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"
