"""The ledger's head, anchored outside the database: ``ledger.head`` beside ``ledger.db``.

A hash chain proves that no entry *inside* it changed, but not that its newest entries are all
there: drop the append-only triggers, ``DELETE`` the last row, and the shorter chain is still
consistent. So the head is kept in three more places, each checked by ``ledger verify``:

* ``ledger.head`` (this module): a small JSON file, replaced atomically and fsynced after every
  append, naming the newest entry's id and content hash and the highest id ever given out;
* the ``high_water`` table (migration ``m002_head_anchor``): the highest id ever given out, so an
  id is never reused even when the file is lost (SQLite's ``INTEGER PRIMARY KEY`` reuses
  ``max(id) + 1`` after a delete; AUTOINCREMENT cannot be added to an existing table);
* outside the machine: every append prints the head, every export carries it in its metadata, and
  ``edit-auditor ledger verify --expect-head HASH`` checks that a head recorded earlier is still in
  the chain (Crosby and Wallach, "Efficient Data Structures for Tamper-Evident Logging", USENIX
  Security 2009: a log is tamper-evident only against commitments held by someone else).

Example::

    write_anchor(anchor_path(db), HeadAnchor(ledger_id, last_id=3, head="sha256:...", high_water=3))
    read_anchor(anchor_path(db)).head
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

ANCHOR_FORMAT = "edit-auditor-ledger-head"
ANCHOR_VERSION = 1


class AnchorError(ValueError):
    """The head file exists but cannot be read; ``str(e)`` is a one-line explanation."""


@dataclass(frozen=True)
class HeadAnchor:
    ledger_id: str  # the genesis record's ledger_id: a head file belongs to one ledger
    last_id: int  # id of the newest entry (0 while the ledger is empty)
    head: str  # that entry's content hash (the genesis hash while the ledger is empty)
    high_water: int  # the highest id ever given out; the next entry gets a larger one

    def to_json(self) -> dict[str, Any]:
        return {"format": ANCHOR_FORMAT, "version": ANCHOR_VERSION, **asdict(self)}


def anchor_path(db_path: str | Path) -> Path:
    """``<folder>/ledger.head`` for ``<folder>/ledger.db``."""
    db_path = Path(db_path)
    return db_path.with_name(db_path.stem + ".head")


def read_anchor(path: Path) -> HeadAnchor | None:
    """The anchor in ``path``; None when the file does not exist."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise AnchorError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        data = json.loads(raw[:65536].decode("utf-8"))
        if not isinstance(data, dict) or data.get("format") != ANCHOR_FORMAT:
            raise ValueError("not a ledger head file")
        anchor = HeadAnchor(ledger_id=str(data["ledger_id"]), last_id=int(data["last_id"]),
                            head=str(data["head"]), high_water=int(data["high_water"]))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise AnchorError(f"{path}: unreadable ledger head file ({type(e).__name__}: {e})") from None
    if anchor.last_id < 0 or anchor.high_water < anchor.last_id or not anchor.head.startswith("sha256:"):
        raise AnchorError(f"{path}: inconsistent ledger head file")
    return anchor


def write_anchor(path: Path, anchor: HeadAnchor) -> None:
    """Replace ``path`` atomically (temporary sibling, fsync, rename, fsync of the folder)."""
    text = json.dumps(anchor.to_json(), indent=2, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def normalise_hash(text: str) -> str:
    """``sha256:<hex>`` from ``sha256:<hex>`` or a bare 64-digit hex (as a user pastes it)."""
    text = text.strip().lower()
    digest = text.split(":", 1)[1] if text.startswith("sha256:") else text
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise AnchorError(f"{text[:80]!r} is not a sha256 hash (sha256:<64 hex digits>)")
    return "sha256:" + digest


def fsync_dir(path: Path) -> None:
    """fsync a folder, so a rename inside it survives a power cut (best effort)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def head_problems(anchor: HeadAnchor | None, newest_id: int, hash_of: Callable[[int], str | None],
                  high_water: int, ledger_id: str | None, name: str = "ledger.head",
                  ) -> tuple[list[tuple[int | None, str]], list[tuple[int | None, str]]]:
    """What the anchor and the high-water mark say about the ledger's newest entries.

    ``newest_id``: the largest id in the entries table (0: none); ``hash_of(id)``: that entry's
    content hash (the genesis hash for 0, None when absent). Returns ``(problems, warnings)``, each
    a list of ``(entry id or None, reason)``.
    """
    problems: list[tuple[int | None, str]] = []
    warnings: list[tuple[int | None, str]] = []
    if anchor is None:
        problems.append((None, f"the head file {name} is missing, so deleted newest entries could not be "
                               "told apart from a shorter ledger (was it deleted with them?)"))
    elif ledger_id is not None and anchor.ledger_id != ledger_id:
        problems.append((None, f"the head file {name} belongs to another ledger ({anchor.ledger_id})"))
    elif anchor.last_id > newest_id:
        problems.append((newest_id + 1, f"missing: {name} records entry {anchor.last_id} ({anchor.head[:23]}...) "
                                        f"as the head, but the newest entry is {newest_id}: entries were deleted"))
    elif hash_of(anchor.last_id) != anchor.head:
        problems.append((anchor.last_id or None,
                         f"does not match the head recorded in {name} ({anchor.head[:23]}...): "
                         "entries were replaced"))
    elif anchor.last_id < newest_id:
        warnings.append((anchor.last_id + 1, f"{name} still names entry {anchor.last_id}: later entries were "
                                             "committed without it being updated (a crash?); the next append updates it"))
    high = max(high_water, anchor.high_water if anchor else 0)
    if high > newest_id and not any(eid == newest_id + 1 for eid, _ in problems):
        problems.append((newest_id + 1, f"missing: ids up to {high} were given out, but the newest entry is "
                                        f"{newest_id}: entries were deleted"))
    return problems, warnings
