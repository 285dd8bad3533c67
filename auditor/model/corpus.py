"""The reference texts shipped in ``resources/text/`` and how to read them.

Two texts with two uses, kept apart so that perplexity is never measured on the text
that ROME's key statistics were sampled from:

* :func:`ppl_text_path` - the ME-PPL sentences of Yang et al., "The Butterfly Effect of
  Model Editing" (Findings of ACL 2024), used for the perplexity health check;
* :func:`stats_text_path` - English Wikipedia prose (May 2016), used for the second-moment
  statistics C = E[k k^T] of the MLP keys.

Origins, checksums and licences are in ``resources/text/SOURCE.md``. A user can pass any
plain-text (or ME-PPL-style JSON) file instead; :func:`read_text` reads both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from auditor.base import AuditorError
from auditor.model.resources import resource_path, resources_dir

RESOURCES: Path = resources_dir(strict=False)
TEXT_DIR: Path = RESOURCES / "text"
PPL_TEXT = "ME-PPL_1k.json"
STATS_TEXT = "enwiki_2016.txt"


class CorpusError(AuditorError, ValueError):
    """A reference text cannot be read; ``str(e)`` is a one-line explanation."""


def ppl_text_path() -> Path:
    """The shipped perplexity text (ME-PPL, 1,000 sentences); ResourceMissing when absent."""
    return resource_path(f"text/{PPL_TEXT}")


def stats_text_path() -> Path:
    """The shipped key-statistics text (2016 Wikipedia prose); ResourceMissing when absent."""
    return resource_path(f"text/{STATS_TEXT}")


def _json_text(raw: str, path: Path) -> str:
    """Join the ``"Text"`` fields of an ME-PPL-style JSON list (plain strings are accepted too)."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CorpusError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise CorpusError(f"{path}: expected a JSON list of {{\"Text\": ...}} records")
    parts: list[str] = []
    for i, rec in enumerate(data):
        text = rec.get("Text") if isinstance(rec, dict) else rec
        if not isinstance(text, str):
            raise CorpusError(f"{path}: record {i} has no \"Text\" string")
        parts.append(text.strip())
    return "\n".join(p for p in parts if p)


def read_text(path: str | Path) -> str:
    """Plain prose from ``path``: a UTF-8 text file, or an ME-PPL JSON list (``"Text"`` joined)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CorpusError(f"{path}: no such text file")
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CorpusError(f"{path}: cannot be read as UTF-8 text ({e})") from None
    text = _json_text(raw, path) if path.suffix.lower() == ".json" else raw
    if not text.strip():
        raise CorpusError(f"{path}: the text is empty")
    return text


def first_tokens(tokenizer: Any, text: str, n_tokens: int) -> list[int]:
    """The first ``n_tokens`` token ids of ``text`` (no special tokens), reading only a prefix.

    The prefix grows until it yields a margin of tokens beyond ``n_tokens``, so the cut at a
    character boundary never changes the tokens that are kept.
    """
    n_chars = max(1024, n_tokens * 8)
    while True:
        ids = tokenizer(text[:n_chars], add_special_tokens=False)["input_ids"]
        if n_chars >= len(text) or len(ids) > n_tokens + 64:
            return list(ids[:n_tokens])
        n_chars *= 2
