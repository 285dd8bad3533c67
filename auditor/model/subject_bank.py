"""The subject bank: typed groups of well-known entities and the templates each type fits.

The collateral audit (measure/collateral.py) asks "who else changed?" of these subjects. The shipped
bank is ``resources/subject_bank.json`` (its sources in ``subject_bank.SOURCE.md``); a user's own
bank has the same format (``--subject-bank FILE``)::

    {"format": 1, "groups": [{"type": "country", "templates": ["{} is a country in", ...],
                              "relations": ["P30", ...], "subjects": ["France", ...]}, ...]}

The type of an edit decides which subjects are swapped into its prompt (:meth:`SubjectBank.peers`):
the group holding its subject, else the group whose relation ids or templates match its prompt,
else the group whose templates share most words with it; samples are drawn with a seeded generator,
so the same seed gives the same list.

Example::

    bank = load_bank()                      # the shipped bank (or load_bank(Path("mine.json")))
    bank.peers(request, n=20, seed=0)       # 20 other subjects of the request's type
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditor.base import AuditorError
from auditor.model.requests import EditRequest
from auditor.model.resources import resource_path

BANK_FILE = "subject_bank.json"
MAX_BANK_BYTES = 8 << 20


class BankError(AuditorError, ValueError):
    """A subject bank file that cannot be read or has the wrong shape; one-line message."""


@dataclass
class Group:
    type: str
    subjects: list[str]
    templates: list[str] = field(default_factory=list)
    relations: list[str] = field(default_factory=list)
    source: str = ""


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower().replace("{}", " ")))


@dataclass
class SubjectBank:
    groups: list[Group]
    path: str = ""

    @property
    def subjects(self) -> list[str]:
        """Every subject once, in bank order."""
        return list(dict.fromkeys(s for g in self.groups for s in g.subjects))

    def group_of(self, request: EditRequest) -> Group | None:
        """The request's type: its subject's group, a relation or template match, else the most
        word-overlapping templates (None when nothing overlaps)."""
        subject = request.subject.strip().lower()
        for g in self.groups:
            if any(s.lower() == subject for s in g.subjects):
                return g
        relation = (request.meta or {}).get("relation_id")
        for g in self.groups:
            if relation and relation in g.relations:
                return g
        for g in self.groups:
            if request.prompt in g.templates:
                return g
        words = _words(request.prompt)
        best = max(self.groups, key=lambda g: max((len(words & _words(t)) for t in g.templates), default=0),
                   default=None)
        if best is None or not any(words & _words(t) for t in best.templates):
            return None
        return best

    def peers(self, request: EditRequest, n: int, seed: int, exclude: set[str] | None = None) -> list[str]:
        """``n`` subjects of the request's type other than ``exclude`` (and the request's own), drawn with
        ``random.Random(seed)``; topped up from the other groups when the type has fewer."""
        skip = {s.lower() for s in (exclude or set())} | {request.subject.strip().lower()}
        group = self.group_of(request)
        own = [s for s in (group.subjects if group else []) if s.lower() not in skip]
        rest = [s for s in self.subjects if s.lower() not in skip and s not in own]
        rng = random.Random(seed)
        picked = rng.sample(own, min(n, len(own)))
        if len(picked) < n:
            picked += rng.sample(rest, min(n - len(picked), len(rest)))
        return picked


def parse_bank(data: Any, where: str) -> SubjectBank:
    if not isinstance(data, dict) or not isinstance(data.get("groups"), list):
        raise BankError(f"{where}: a subject bank is a JSON object with a \"groups\" list")
    groups = []
    for i, g in enumerate(data["groups"]):
        if not isinstance(g, dict) or not isinstance(g.get("subjects"), list) or not g["subjects"]:
            raise BankError(f"{where}: group {i + 1} needs a non-empty \"subjects\" list")
        subjects = [s.strip() for s in g["subjects"] if isinstance(s, str) and s.strip()]
        templates = [t for t in g.get("templates") or [] if isinstance(t, str) and t.count("{}") == 1]
        if len(subjects) != len(g["subjects"]):
            raise BankError(f"{where}: group {i + 1} has a subject that is not a non-empty string")
        groups.append(Group(type=str(g.get("type") or f"group {i + 1}"), subjects=subjects, templates=templates,
                            relations=[str(r) for r in g.get("relations") or []], source=str(g.get("source", ""))))
    if not groups:
        raise BankError(f"{where}: the bank has no groups")
    return SubjectBank(groups, path=where)


def load_bank(path: str | Path | None = None) -> SubjectBank:
    """The bank at ``path``, or the shipped one; :class:`BankError` with one line when unusable."""
    file = Path(path) if path is not None else resource_path(BANK_FILE)
    try:
        if file.stat().st_size > MAX_BANK_BYTES:
            raise BankError(f"{file}: larger than {MAX_BANK_BYTES} bytes")
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as e:
        raise BankError(f"{file}: cannot read the subject bank ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BankError(f"{file}: not a JSON subject bank ({type(e).__name__})") from None
    return parse_bank(data, str(file))
