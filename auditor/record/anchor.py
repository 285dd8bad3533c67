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

Optionally the head file is signed: with ``EDIT_AUDITOR_HEAD_KEY`` naming a key file (kept away
from the workspace, e.g. ``~/.config/edit-auditor/head.key``), every head file carries an
HMAC-SHA256 of its fields, and ``verify`` refuses one that is unsigned or signed with another key, so
rewriting rows, high-water mark and head file together no longer passes without the key.

Example::

    write_anchor(anchor_path(db), HeadAnchor(ledger_id, last_id=3, head="sha256:...", high_water=3))
    read_anchor(anchor_path(db)).head
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from auditor.base import AuditorError

ANCHOR_FORMAT = "edit-auditor-ledger-head"
ANCHOR_VERSION = 1
KEY_ENV = "EDIT_AUDITOR_HEAD_KEY"  # path of the key file that signs head files (optional)
MIN_KEY_BYTES = 16


class AnchorError(AuditorError, ValueError):
    """The head file exists but cannot be read; ``str(e)`` is a one-line explanation."""


@dataclass(frozen=True)
class HeadAnchor:
    ledger_id: str  # the genesis record's ledger_id: a head file belongs to one ledger
    last_id: int  # id of the newest entry (0 while the ledger is empty)
    head: str  # that entry's content hash (the genesis hash while the ledger is empty)
    high_water: int  # the highest id ever given out; the next entry gets a larger one
    signature: str | None = None  # "hmac-sha256:<hex>" over the fields above, when a key is configured

    def to_json(self) -> dict[str, Any]:
        body = {"format": ANCHOR_FORMAT, "version": ANCHOR_VERSION, **asdict(self)}
        if self.signature is None:
            del body["signature"]
        return body

    def signed(self, key: bytes) -> "HeadAnchor":
        return HeadAnchor(self.ledger_id, self.last_id, self.head, self.high_water, _mac(self, key))

    def signature_matches(self, key: bytes) -> bool:
        return self.signature is not None and hmac.compare_digest(self.signature, _mac(self, key))


def _mac(anchor: HeadAnchor, key: bytes) -> str:
    body = json.dumps([anchor.ledger_id, anchor.last_id, anchor.head, anchor.high_water], separators=(",", ":"))
    return "hmac-sha256:" + hmac.new(key, body.encode("utf-8"), hashlib.sha256).hexdigest()


def signing_key() -> bytes | None:
    """The key named by ``EDIT_AUDITOR_HEAD_KEY`` (None when the variable is not set)."""
    path = os.environ.get(KEY_ENV)
    if not path:
        return None
    try:
        key = Path(path).expanduser().read_bytes()
    except OSError as e:
        raise AnchorError(f"{KEY_ENV}={path}: cannot read the head signing key ({e.strerror})") from None
    if len(key) < MIN_KEY_BYTES:
        raise AnchorError(f"{KEY_ENV}={path}: a signing key has at least {MIN_KEY_BYTES} bytes")
    return key


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
        signature = data.get("signature")
        anchor = HeadAnchor(ledger_id=str(data["ledger_id"]), last_id=int(data["last_id"]),
                            head=str(data["head"]), high_water=int(data["high_water"]),
                            signature=None if signature is None else str(signature))
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
    problems.extend(signature_problems(anchor, name))
    high = max(high_water, anchor.high_water if anchor else 0)
    if high > newest_id and not any(eid == newest_id + 1 for eid, _ in problems):
        problems.append((newest_id + 1, f"missing: ids up to {high} were given out, but the newest entry is "
                                        f"{newest_id}: entries were deleted"))
    return problems, warnings


def signature_problems(anchor: HeadAnchor | None, name: str) -> list[tuple[int | None, str]]:
    """With a signing key configured, an unsigned or wrongly signed head file is a problem."""
    key = signing_key()
    if key is None or anchor is None:
        return []
    if anchor.signature is None:
        return [(None, f"{name} is not signed, but a signing key is configured ({KEY_ENV}): it was rewritten")]
    if not anchor.signature_matches(key):
        return [(None, f"the signature of {name} does not match the signing key: it was rewritten without it")]
    return []
