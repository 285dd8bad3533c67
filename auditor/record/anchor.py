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

Since issue 17 (format version 2) the head file also commits to everything else the database
holds that is evidence but not in the entries' chain: the watchlist's newest event and its hash
(``watch_last_id``, ``watch_head``), and ``state``, a digest of the settings, the high-water mark
and the full-text index's tables (:meth:`Ledger.state_digest`). Each write of the file increments
``counter`` and records ``time``, so a head kept elsewhere (``edit-auditor ledger head``) shows
whether the file now in place is older than it (:func:`kept_head_problems`).

Optionally the head file is signed: with ``EDIT_AUDITOR_HEAD_KEY`` naming a key file (kept away
from the workspace, e.g. ``~/.config/edit-auditor/head.key``), every head file carries an
HMAC-SHA256 of all its fields, and ``verify`` refuses one that is unsigned or signed with another key, so
rewriting rows, high-water mark and head file together no longer passes without the key. A
signature says who wrote a head, not when: an older signed head put back is valid; only the
counter of a head kept elsewhere tells it apart (Crosby and Wallach again: freshness needs an
outside commitment).

Example::

    write_anchor(anchor_path(db), HeadAnchor(ledger_id, last_id=3, head="sha256:...", high_water=3))
    read_anchor(anchor_path(db)).head
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from auditor.base import AuditorError
from auditor.files import ReadError, atomic_file, fsync_dir, read_regular  # noqa: F401 (fsync_dir: its 0.1 home; ledger takes it here)

ANCHOR_FORMAT = "edit-auditor-ledger-head"
ANCHOR_VERSION = 2  # 2: counter, time, watchlist head and state digest (issue 17); 1 is still read
KEY_ENV = "EDIT_AUDITOR_HEAD_KEY"  # path of the key file that signs head files (optional)
MIN_KEY_BYTES = 16
MAX_KEY_BYTES = 4096
MAX_HEAD_BYTES = 64 * 1024
KEPT_RE = re.compile(r"^counter:(\d{1,18})/entry:(\d{1,18})/(sha256:[0-9a-f]{64})$")


class AnchorError(AuditorError, ValueError):
    """The head file exists but cannot be read; ``str(e)`` is a one-line explanation."""


@dataclass(frozen=True)
class HeadAnchor:
    ledger_id: str  # the genesis record's ledger_id: a head file belongs to one ledger
    last_id: int  # id of the newest entry (0 while the ledger is empty)
    head: str  # that entry's content hash (the genesis hash while the ledger is empty)
    high_water: int  # the highest id ever given out; the next entry gets a larger one
    signature: str | None = None  # "hmac-sha256:<hex>" over the fields above, when a key is configured
    # version 2 (None in a version-1 file)
    counter: int | None = None  # how many times the head file was written; only ever grows
    time: str | None = None  # UTC time of this write (ISO 8601, "Z")
    watch_last_id: int | None = None  # the watchlist's newest event (0: none)
    watch_head: str | None = None  # its content hash (the genesis hash while the list is empty)
    state: str | None = None  # Ledger.state_digest(): settings, high-water mark, full-text index
    # Written just before a commit: the head as it was, in case the commit does not happen (a kill, a
    # full disk). The head file is rewritten without it right after the commit.
    prev: "HeadAnchor | None" = None

    @property
    def version(self) -> int:
        return 1 if self.counter is None else 2

    def to_json(self) -> dict[str, Any]:
        body = {"format": ANCHOR_FORMAT, "version": self.version, **asdict(self)}
        if self.prev is not None:
            body["prev"] = self.prev.to_json()
        return {k: v for k, v in body.items() if v is not None}

    def signed(self, key: bytes) -> "HeadAnchor":
        return replace(self, signature=_mac(self, key))

    def signature_matches(self, key: bytes) -> bool:
        return self.signature is not None and hmac.compare_digest(self.signature, _mac(self, key))

    def kept(self) -> str:
        """The one line ``edit-auditor ledger head`` prints and ``verify --expect-head`` reads back."""
        return f"counter:{self.counter or 0}/entry:{self.last_id}/{self.head}"


def _mac(anchor: HeadAnchor, key: bytes) -> str:
    fields = [anchor.ledger_id, anchor.last_id, anchor.head, anchor.high_water]
    if anchor.version >= 2:  # every field of a version-2 head is signed
        fields += [anchor.counter, anchor.time, anchor.watch_last_id, anchor.watch_head, anchor.state,
                   None if anchor.prev is None else anchor.prev.to_json()]
    body = json.dumps(fields, separators=(",", ":"))
    return "hmac-sha256:" + hmac.new(key, body.encode("utf-8"), hashlib.sha256).hexdigest()


def signing_key() -> bytes | None:
    """The key named by ``EDIT_AUDITOR_HEAD_KEY`` (None when the variable is not set)."""
    path = os.environ.get(KEY_ENV)
    if not path:
        return None
    try:
        key = read_regular(Path(path).expanduser(), limit=MAX_KEY_BYTES, what="the head signing key")
    except ReadError as e:
        raise AnchorError(f"{KEY_ENV}={path}: cannot read the head signing key ({e})") from None
    assert key is not None
    if len(key) < MIN_KEY_BYTES:
        raise AnchorError(f"{KEY_ENV}={path}: a signing key has at least {MIN_KEY_BYTES} bytes")
    return key


def anchor_path(db_path: str | Path) -> Path:
    """``<folder>/ledger.head`` for ``<folder>/ledger.db``."""
    db_path = Path(db_path)
    return db_path.with_name(db_path.stem + ".head")


def read_anchor(path: Path) -> HeadAnchor | None:
    """The anchor in ``path``; None when the file does not exist. Read bounded, regular files only."""
    try:
        raw = read_regular(path, limit=MAX_HEAD_BYTES, what="ledger head file", missing_ok=True)
    except ReadError as e:
        raise AnchorError(str(e)) from None
    if raw is None:
        return None
    try:
        return parse_anchor(json.loads(raw.decode("utf-8")))
    except AnchorError as e:
        raise AnchorError(f"{path}: {e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise AnchorError(f"{path}: unreadable ledger head file ({type(e).__name__}: {e})") from None


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**62:
        raise ValueError(f"{value!r} is not a count")
    return value


def _opt(data: dict[str, Any], name: str, kind: Callable[[Any], Any]) -> Any:
    return None if data.get(name) is None else kind(data[name])


def parse_anchor(data: Any) -> HeadAnchor:
    """A :class:`HeadAnchor` from its JSON form (a head file, or ``ledger head --json`` kept elsewhere)."""
    try:
        if not isinstance(data, dict) or data.get("format") != ANCHOR_FORMAT:
            raise ValueError("not a ledger head file")
        anchor = HeadAnchor(ledger_id=str(data["ledger_id"]), last_id=_int(data["last_id"]),
                            head=normalise_hash(str(data["head"])), high_water=_int(data["high_water"]),
                            signature=_opt(data, "signature", str), counter=_opt(data, "counter", _int),
                            time=_opt(data, "time", str), watch_last_id=_opt(data, "watch_last_id", _int),
                            watch_head=_opt(data, "watch_head", lambda h: normalise_hash(str(h))),
                            state=_opt(data, "state", lambda h: normalise_hash(str(h))),
                            prev=_opt(data, "prev", _prev))
    except (ValueError, KeyError, TypeError) as e:
        raise AnchorError(f"unreadable ledger head file ({type(e).__name__}: {e})") from None
    if anchor.high_water < anchor.last_id:
        raise AnchorError("inconsistent ledger head file (high-water mark below the head)")
    if data.get("version", 1) >= 2 and None in (anchor.counter, anchor.time, anchor.watch_last_id,
                                                anchor.watch_head, anchor.state):
        raise AnchorError("inconsistent ledger head file (a version-2 head lacks a field)")
    return anchor


def _prev(data: Any) -> HeadAnchor:
    if isinstance(data, dict) and "prev" in data:
        raise ValueError("a pending head's previous head cannot itself be pending")
    return parse_anchor(data)


def parse_kept(text: str) -> HeadAnchor | str:
    """What ``verify --expect-head`` was given: a bare hash (returned normalised), the line
    ``ledger head`` prints (``counter:N/entry:M/sha256:...``), its ``--json`` output, or the path
    of a file holding either."""
    text = text.strip()
    if not text.startswith(("{", "counter:", "sha256:")) and os.path.lexists(os.path.expanduser(text)):
        raw = read_regular(Path(text).expanduser(), limit=MAX_HEAD_BYTES, what="kept head (--expect-head)")
        assert raw is not None
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise AnchorError(f"{text}: not a kept ledger head (not UTF-8 text)") from None
    if text.startswith("{"):
        try:
            return parse_anchor(json.loads(text))
        except ValueError as e:
            raise AnchorError(f"--expect-head: not a kept ledger head ({e})") from None
    match = KEPT_RE.match(text.lower())
    if match:
        return HeadAnchor("", int(match[2]), match[3], int(match[2]), counter=int(match[1]))
    return normalise_hash(text)


def write_anchor(path: Path, anchor: HeadAnchor) -> None:
    """Replace ``path`` atomically (:func:`auditor.files.atomic_file`: temporary sibling, fsync,
    rename, fsync of the folder)."""
    with atomic_file(path, "w", what="ledger head") as f:
        f.write(json.dumps(anchor.to_json(), indent=2, sort_keys=True) + "\n")


def normalise_hash(text: str) -> str:
    """``sha256:<hex>`` from ``sha256:<hex>`` or a bare 64-digit hex (as a user pastes it)."""
    text = text.strip().lower()
    digest = text.split(":", 1)[1] if text.startswith("sha256:") else text
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise AnchorError(f"{text[:80]!r} is not a sha256 hash (sha256:<64 hex digits>)")
    return "sha256:" + digest


def kept_head_problems(kept: HeadAnchor, current: HeadAnchor | None, hash_of: Callable[[int], str | None],
                       ledger_id: str | None) -> list[str]:
    """Why the ledger as it is now is not a continuation of the head ``kept`` elsewhere."""
    found: list[str] = []
    if kept.ledger_id and ledger_id is not None and kept.ledger_id != ledger_id:
        return [f"the kept head belongs to another ledger ({kept.ledger_id})"]
    key = signing_key()
    if key is not None and kept.signature is not None and not kept.signature_matches(key):
        found.append("the kept head's signature does not match the signing key (not a head this key wrote)")
    if hash_of(kept.last_id) != kept.head:
        found.append(f"the kept head (entry {kept.last_id}, {kept.head[:23]}...) is not in this ledger: "
                     "entries up to it were deleted or rewritten")
    if current is None or kept.counter is None:
        return found
    if (current.counter or 0) < kept.counter:
        found.append(f"ledger.head is older than the head kept elsewhere (counter {current.counter or 0} < "
                     f"{kept.counter}): an older head file was put back")
    elif current.counter == kept.counter and (current.last_id, current.head) != (kept.last_id, kept.head):
        found.append(f"ledger.head has the kept head's counter {kept.counter} but another head: it was rewritten")
    if current.last_id < kept.last_id:
        found.append(f"ledger.head names entry {current.last_id}, before the kept head's entry {kept.last_id}")
    if kept.time and current.time and current.time < kept.time:
        found.append(f"ledger.head was written at {current.time}, before the kept head ({kept.time})")
    return found


def head_problems(anchor: HeadAnchor | None, newest_id: int, hash_of: Callable[[int], str | None],
                  high_water: int, ledger_id: str | None, name: str = "ledger.head",
                  signature_of: HeadAnchor | None = None,
                  ) -> tuple[list[tuple[int | None, str]], list[tuple[int | None, str]]]:
    """What the anchor and the high-water mark say about the ledger's newest entries.

    ``signature_of``: the head file whose signature covers ``anchor`` (a pending head's ``prev``).

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
        lag = (anchor.last_id + 1, f"{name} still names entry {anchor.last_id}: later entries were committed "
                                   "without it being updated (a crash?)")
        if signing_key() is not None:  # a signed head must cover every entry: forged ones can be added after it
            problems.append((lag[0], lag[1] + "; they are not covered by its signature (`ledger reanchor`)"))
        else:
            warnings.append((lag[0], lag[1] + "; the next append updates it"))
    problems.extend(signature_problems(signature_of or anchor, name))
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


def state_problems(anchor: HeadAnchor | None, watch_newest: int, watch_hash_of: Callable[[int], str | None],
                   state: str, entries_current: bool, name: str = "ledger.head",
                   ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """What a version-2 head says about the watchlist and the rest of the database.

    ``watch_newest``: the newest watchlist event's id (0: none); ``watch_hash_of(id)``: its hash (the
    genesis hash for 0); ``state``: :meth:`Ledger.state_digest` now; ``entries_current``: the head
    file names the newest entry (else the digest cannot be compared). Returns ``(problems,
    warnings)``, each a list of ``(where, reason)``.
    """
    problems: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    if anchor is None:
        return problems, warnings
    if anchor.version < 2:
        warnings.append(("ledger head", f"{name} is from an older version: the watchlist, the settings and the "
                                        "full-text index are anchored from the next append on"))
        return problems, warnings
    assert anchor.watch_last_id is not None
    current = entries_current
    if anchor.watch_last_id > watch_newest:
        problems.append(("watchlist", f"{name} records event {anchor.watch_last_id} as the watchlist's newest, but "
                                      f"the newest is {watch_newest}: events were deleted"))
    elif watch_hash_of(anchor.watch_last_id) != anchor.watch_head:
        problems.append(("watchlist", f"event {anchor.watch_last_id} does not match the watchlist head recorded in "
                                      f"{name}: events were replaced"))
    elif anchor.watch_last_id < watch_newest:
        current = False
        lag = f"{name} still names watchlist event {anchor.watch_last_id}: later events were committed without it"
        if signing_key() is not None:
            problems.append(("watchlist", lag + "; they are not covered by its signature (`ledger reanchor`)"))
        else:
            warnings.append(("watchlist", lag + " (a crash?); the next append updates it"))
    if current and state != anchor.state:
        problems.append(("ledger state", f"the settings, the high-water mark or the full-text index differ from what "
                                         f"{name} records: changed outside the program"))
    return problems, warnings
