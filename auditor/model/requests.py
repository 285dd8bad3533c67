"""Edit requests: what to change, and the prompts that measure the change.

Three JSON shapes are read (a list of records, one record, or JSON lines):

* ROME's CounterFact: ``requested_rewrite{prompt, subject, target_new.str, target_true.str}``,
  ``paraphrase_prompts``, ``neighborhood_prompts`` (answers: the true target);
* EasyEdit's ZsRE: ``src``, ``subject``, ``alt``, ``answers``, ``rephrase``, ``loc``, ``loc_ans``,
  ``portability``;
* the flat form: ``prompt``, ``subject``, ``target_new``, ``target_true``, ``paraphrases``,
  ``neighborhood`` ([{prompt, target}]), ``portability`` ([{prompt, target}]); EasyEdit's
  CounterFact names (``ground_truth``, ``rephrase_prompt``, ``locality_prompt``,
  ``locality_ground_truth``) are read as their flat equivalents.

A ``{}`` in any prompt is filled with the subject. Keys not understood are kept
in :attr:`EditRequest.meta`. Every error names the record it comes from (and, in a
JSON-lines file, its line).

A request file is untrusted input: it must be a regular file of at most
:data:`MAX_FILE_BYTES`, nested at most :data:`MAX_DEPTH` deep, with at most
:data:`MAX_RECORDS` records whose texts stay within :data:`MAX_TEXT_CHARS`.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from auditor.base import AuditorError


class RequestError(AuditorError, ValueError):
    """A request (or a request file) cannot be used; the message names the record."""


MAX_FILE_BYTES = 512 << 20  # CounterFact, the largest public set, is about 30 MB
MAX_DEPTH = 32  # the deepest real record (CounterFact) is 4 levels
MAX_RECORDS = 1_000_000
MAX_TEXT_CHARS = 20_000  # one prompt, subject or target
MAX_PROMPTS = 10_000  # paraphrases / neighbourhood / portability prompts of one record


@dataclass(frozen=True)
class Probe:
    prompt: str  # a complete prompt (subject already filled in)
    target: str  # the answer expected after the edit (locality: the answer before it)


@dataclass
class EditRequest:
    prompt: str  # template with exactly one "{}" where the subject goes
    subject: str
    target_new: str
    target_true: str | None = None
    paraphrases: list[str] = field(default_factory=list)  # complete prompts
    neighborhood: list[Probe] = field(default_factory=list)
    portability: list[Probe] = field(default_factory=list)
    case_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def label(self) -> str:
        return f"record {self.case_id}" if self.case_id is not None else f"request {self.subject!r}"

    @property
    def text(self) -> str:
        """The edit prompt with the subject filled in."""
        return self.prompt.replace("{}", self.subject)

    def validate(self) -> None:
        where = self.label
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise RequestError(f"{where}: the prompt is empty")
        if not isinstance(self.subject, str) or not self.subject.strip():
            raise RequestError(f"{where}: the subject is empty")
        if not isinstance(self.target_new, str) or not self.target_new.strip():
            raise RequestError(f"{where}: the new target is empty")
        if self.prompt.count("{}") == 0:
            if self.subject not in self.prompt:
                raise RequestError(
                    f"{where}: the subject {self.subject!r} does not occur in the prompt {self.prompt!r}"
                )
            # a complete prompt: turn its last occurrence of the subject into the slot
            head, _, tail = self.prompt.rpartition(self.subject)
            self.prompt = head + "{}" + tail
        elif self.prompt.count("{}") > 1:
            raise RequestError(f"{where}: the prompt {self.prompt!r} has more than one '{{}}'")
        if self.prompt.rstrip() != self.prompt:
            self.prompt = self.prompt.rstrip()
        if self.target_true is not None and not str(self.target_true).strip():
            self.target_true = None
        texts = [self.prompt, self.subject, self.target_new, self.target_true or "", *self.paraphrases,
                 *(t for p in [*self.neighborhood, *self.portability] for t in (p.prompt, p.target))]
        if not all(isinstance(t, str) for t in texts):
            raise RequestError(f"{where}: every prompt and target must be a string")
        if not all(map(_is_unicode, texts)):
            raise RequestError(f"{where}: a prompt or target holds a lone surrogate (text that is not valid Unicode)")
        if max(map(len, texts)) > MAX_TEXT_CHARS:
            raise RequestError(f"{where}: a prompt or target is longer than {MAX_TEXT_CHARS} characters")
        if max(len(self.paraphrases), len(self.neighborhood), len(self.portability)) > MAX_PROMPTS:
            raise RequestError(f"{where}: more than {MAX_PROMPTS} paraphrase, neighbourhood or portability prompts")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["neighborhood"] = [asdict(p) for p in self.neighborhood]
        d["portability"] = [asdict(p) for p in self.portability]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "EditRequest":
        """Inverse of :meth:`to_json` (the flat form)."""
        return parse_record(d, 0)


# Tokens kept free beyond a prompt and its answer: the context templates' prefixes (ROME, MEMIT and
# AlphaEdit prepend a few words of generated text) and the positions a prefix of the subject moves.
CONTEXT_MARGIN = 32


def check_context(requests: list[EditRequest], tokenizer: Any, limit: int | None,
                  margin: int = CONTEXT_MARGIN) -> None:
    """Refuse, before anything is computed, a request whose prompt (or paraphrase, neighbourhood or
    portability prompt) with its answer would not fit the model's context of ``limit`` tokens
    (``margin`` kept for the templates); a learned position table (GPT-2) fails with an
    IndexError past its end, rotary models silently read garbage. ``limit`` None: no limit known."""
    if limit is None:
        return
    for req in requests:
        probes = [("prompt", req.text, req.target_new), ("true target", req.text, req.target_true or ""),
                  *((f"paraphrase {i + 1}", p, req.target_new) for i, p in enumerate(req.paraphrases)),
                  *((f"neighbourhood prompt {i + 1}", p.prompt, p.target) for i, p in enumerate(req.neighborhood)),
                  *((f"portability prompt {i + 1}", p.prompt, p.target) for i, p in enumerate(req.portability))]
        for name, prompt, answer in probes:
            n = len(tokenizer(prompt + " " + answer)["input_ids"])
            if n + margin > limit:
                raise RequestError(f"{req.label}: the {name} with its answer is {n} tokens; the model reads at most "
                                   f"{limit} ({margin} kept for the context templates): shorten it")


def _fill(prompt: str, subject: str) -> str:
    return prompt.replace("{}", subject)


def _probes(items: Any, subject: str, where: str, name: str) -> list[Probe]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise RequestError(f"{where}: '{name}' must be a list of {{prompt, target}} objects")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "prompt" not in item or "target" not in item:
            raise RequestError(f"{where}: {name}[{i}] must be an object with 'prompt' and 'target'")
        target = item["target"]
        if isinstance(target, list):
            target = target[0] if target else ""
        if not str(target).strip():
            raise RequestError(f"{where}: {name}[{i}] has an empty target")
        out.append(Probe(_fill(str(item["prompt"]), subject), str(target)))
    return out


def _strs(items: Any, subject: str, where: str, name: str) -> list[str]:
    if items is None:
        return []
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
        raise RequestError(f"{where}: '{name}' must be a list of prompts")
    return [_fill(x, subject) for x in items]


def _target(value: Any, where: str, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("str")
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestError(f"{where}: '{name}' must be a string")
    return value


def _counterfact(rec: dict[str, Any], where: str) -> EditRequest:
    rw = rec["requested_rewrite"]
    if not isinstance(rw, dict):
        raise RequestError(f"{where}: 'requested_rewrite' must be an object")
    for key in ("prompt", "subject", "target_new"):
        if key not in rw:
            raise RequestError(f"{where}: 'requested_rewrite' has no '{key}'")
    subject = rw["subject"]
    true = _target(rw.get("target_true"), where, "target_true")
    neigh = [Probe(p, true) for p in _strs(rec.get("neighborhood_prompts"), subject, where, "neighborhood_prompts")] if true else []
    known = {"requested_rewrite", "paraphrase_prompts", "neighborhood_prompts", "case_id"}
    meta = {k: v for k, v in rec.items() if k not in known}
    if "relation_id" in rw:
        meta["relation_id"] = rw["relation_id"]
    return EditRequest(
        prompt=rw["prompt"],
        subject=subject,
        target_new=_target(rw["target_new"], where, "target_new") or "",
        target_true=true,
        paraphrases=_strs(rec.get("paraphrase_prompts"), subject, where, "paraphrase_prompts"),
        neighborhood=neigh,
        case_id=None if rec.get("case_id") is None else str(rec["case_id"]),
        meta=meta,
    )


def _zsre(rec: dict[str, Any], where: str) -> EditRequest:
    for key in ("src", "subject", "alt"):
        if key not in rec:
            raise RequestError(f"{where}: ZsRE record has no '{key}'")
    subject = rec["subject"]
    loc = rec.get("loc")
    neighborhood = []
    if loc and rec.get("loc_ans"):
        neighborhood = [Probe(str(loc), str(_target(rec["loc_ans"], where, "loc_ans")))]
    portability = []
    port = rec.get("portability")
    if isinstance(port, dict):  # EasyEdit: {"New Question": ..., "New Answer": ...}
        q, a = port.get("New Question"), port.get("New Answer")
        if q and a:
            portability = [Probe(str(q), str(_target(a, where, "portability")))]
    elif isinstance(port, list):
        portability = _probes(port, subject, where, "portability")
    known = {"src", "subject", "alt", "answers", "rephrase", "loc", "loc_ans", "portability", "case_id"}
    return EditRequest(
        prompt=rec["src"],
        subject=subject,
        target_new=_target(rec["alt"], where, "alt") or "",
        target_true=_target(rec.get("answers"), where, "answers"),
        paraphrases=_strs(rec.get("rephrase"), subject, where, "rephrase"),
        neighborhood=neighborhood,
        portability=portability,
        case_id=None if rec.get("case_id") is None else str(rec["case_id"]),
        meta={k: v for k, v in rec.items() if k not in known},
    )


def _easyedit_aliases(rec: dict[str, Any]) -> dict[str, Any]:
    """EasyEdit's CounterFact split uses ground_truth / rephrase_prompt / locality_prompt."""
    rec = dict(rec)
    if "ground_truth" in rec and "target_true" not in rec:
        rec["target_true"] = rec.pop("ground_truth")
    if "rephrase_prompt" in rec and "paraphrases" not in rec:
        rec["paraphrases"] = [rec.pop("rephrase_prompt")]
    if "locality_prompt" in rec and "locality_ground_truth" in rec and "neighborhood" not in rec:
        rec["neighborhood"] = [{"prompt": rec.pop("locality_prompt"), "target": rec.pop("locality_ground_truth")}]
    return rec


def _flat(rec: dict[str, Any], where: str) -> EditRequest:
    for key in ("prompt", "subject", "target_new"):
        if key not in rec:
            raise RequestError(f"{where}: no '{key}'")
    subject = rec["subject"]
    rec = _easyedit_aliases(rec)
    known = {"prompt", "subject", "target_new", "target_true", "paraphrases", "neighborhood",
             "portability", "case_id", "meta"}
    meta = dict(rec.get("meta") or {})
    meta.update({k: v for k, v in rec.items() if k not in known})
    return EditRequest(
        prompt=rec["prompt"],
        subject=subject,
        target_new=_target(rec["target_new"], where, "target_new") or "",
        target_true=_target(rec.get("target_true"), where, "target_true"),
        paraphrases=_strs(rec.get("paraphrases"), subject, where, "paraphrases"),
        neighborhood=_probes(rec.get("neighborhood"), subject, where, "neighborhood"),
        portability=_probes(rec.get("portability"), subject, where, "portability"),
        case_id=None if rec.get("case_id") is None else str(rec["case_id"]),
        meta=meta,
    )


# ---------------------------------------------------------------- the schema of a record
#
# Every record is checked against this table before any shape is read, so a wrong type is one line
# naming the field rather than an exception deep inside the parsing. Kinds: "text" a string;
# "texts" a string or a list of strings; "target" a string, a list of strings (the first is used)
# or an object whose "str" is one (CounterFact); "probes" a list of {prompt: text, target: target};
# "id" a string or a whole number SQLite can hold; "object" a JSON object.
FIELDS: dict[str, str] = {
    "prompt": "text", "subject": "text", "src": "text", "loc": "text", "locality_prompt": "text",
    "target_new": "target", "target_true": "target", "alt": "target", "answers": "target", "loc_ans": "target",
    "ground_truth": "target", "locality_ground_truth": "target",
    "paraphrases": "texts", "paraphrase_prompts": "texts", "neighborhood_prompts": "texts", "rephrase": "texts",
    "rephrase_prompt": "texts",
    "neighborhood": "probes",
    "case_id": "id", "id": "id",
    "meta": "object", "requested_rewrite": "object",
}
REWRITE_FIELDS = {k: FIELDS[k] for k in ("prompt", "subject", "target_new", "target_true")}
MAX_INT = 2**63 - 1  # SQLite's integers are signed 64-bit


def _kind_error(value: Any, kind: str) -> str | None:
    """What is wrong with ``value`` for ``kind`` (None: nothing)."""
    def is_text(x: Any) -> bool:
        return isinstance(x, str)

    if kind == "text":
        return None if is_text(value) else "must be a string"
    if kind == "texts":
        ok = is_text(value) or (isinstance(value, list) and all(map(is_text, value)))
        return None if ok else "must be a string or a list of strings"
    if kind == "target":
        if isinstance(value, dict):
            value = value.get("str")
        ok = value is None or is_text(value) or (isinstance(value, list) and all(map(is_text, value)))
        return None if ok else "must be a string, a list of strings or an object with a string 'str'"
    if kind == "probes":
        if not isinstance(value, list):
            return "must be a list of {prompt, target} objects"
        for i, p in enumerate(value):
            if not (isinstance(p, dict) and is_text(p.get("prompt")) and p.get("target") is not None
                    and _kind_error(p["target"], "target") is None):
                return f"[{i}] must be an object with a string 'prompt' and 'target'"
        return None
    if kind == "id":
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            return "must be a string or a whole number"
        return None if not isinstance(value, int) or abs(value) <= MAX_INT else f"must be at most {MAX_INT}"
    return None if isinstance(value, dict) else "must be a JSON object"


def check_record(rec: Any, where: str) -> None:
    """Raise :class:`RequestError` naming the first field of ``rec`` whose type or value is wrong:
    a known field of the wrong kind (:data:`FIELDS`), or anywhere in the record (``meta`` and
    unknown keys included) a string that is not valid Unicode (a lone surrogate cannot be stored
    or printed as UTF-8), a whole number beyond 64 bits, or a number that is not finite."""
    if not isinstance(rec, dict):
        raise RequestError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    for key, kind in FIELDS.items():
        if key in rec and (rec[key] is not None or kind == "text") and (problem := _kind_error(rec[key], kind)):
            raise RequestError(f"{where}: {_field_problem(key, problem, rec[key])}")
    if isinstance(rec.get("portability"), list) and (problem := _kind_error(rec["portability"], "probes")):
        raise RequestError(f"{where}: {_field_problem('portability', problem, rec['portability'])}")
    rewrite = rec.get("requested_rewrite")
    if isinstance(rewrite, dict):
        for key, kind in REWRITE_FIELDS.items():
            if key in rewrite and (rewrite[key] is not None or kind == "text") and (
                    problem := _kind_error(rewrite[key], kind)):
                raise RequestError(f"{where}: field 'requested_rewrite.{key}' {problem}, got {_type_name(rewrite[key])}")
    stack: list[tuple[str, Any]] = [(str(k), v) for k, v in rec.items()]
    while stack:
        name, value = stack.pop()
        if isinstance(value, str) and not _is_unicode(value):
            raise RequestError(f"{where}: field '{_safe(name)}' holds a lone surrogate (text that is not valid Unicode)")
        if isinstance(value, bool):
            continue
        if isinstance(value, int) and abs(value) > MAX_INT:
            raise RequestError(f"{where}: field '{_safe(name)}' holds a number beyond 64 bits")
        if isinstance(value, float) and not math.isfinite(value):
            raise RequestError(f"{where}: field '{_safe(name)}' holds {value} (not a finite number)")
        if isinstance(value, dict):
            for k, v in value.items():
                if not _is_unicode(k):
                    raise RequestError(f"{where}: a key inside '{_safe(name)}' is not valid Unicode")
                stack.append((f"{name}.{k}", v))
        elif isinstance(value, list):
            stack.extend((f"{name}[{i}]", v) for i, v in enumerate(value))


def _field_problem(key: str, problem: str, value: Any) -> str:
    """``field 'neighborhood[2]' must be ...`` or ``field 'subject' must be ..., got a number``."""
    if problem.startswith("["):  # an element of a list
        index, _, rest = problem.partition("] ")
        return f"field '{key}{index}]' {rest}"
    return f"field '{key}' {problem}, got {_type_name(value)}"


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _safe(name: str) -> str:
    """A field name fit for an error line (escapes, no surrogates, at most 80 characters)."""
    text = name.encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)
    return text if len(text) <= 80 else text[:77] + "..."


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def parse_record(rec: Any, index: int) -> EditRequest:
    """One record of any of the three shapes; ``index`` names it in errors."""
    where = f"record {index}"
    for k in ("case_id", "id"):
        if isinstance(rec, dict) and rec.get(k) is not None:
            where = f"record {index} ({k} {_safe(str(rec[k]))})"
            break
    check_record(rec, where)
    try:
        if "requested_rewrite" in rec:
            req = _counterfact(rec, where)
        elif "src" in rec and "alt" in rec:
            req = _zsre(rec, where)
        else:
            req = _flat(rec, where)
    except RequestError as e:
        msg = str(e)
        raise RequestError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    if req.case_id is None:
        req.case_id = str(rec.get("id", index))
    return req


def parse_requests(data: Any) -> list[EditRequest]:
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise RequestError("a request file holds a JSON object or a list of them")
    if not data:
        raise RequestError("the request file holds no records")
    return [parse_record(rec, i) for i, rec in enumerate(data)]


def load_requests(path: str | Path) -> list[EditRequest]:
    """Read a JSON (list or object) or JSON-lines request file, within the module's limits."""
    path = Path(path)
    text = _read_limited(path)
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except _NotJson as e:
        raise RequestError(f"request file {path}: {e}") from None
    except RecursionError:
        raise RequestError(f"request file {path} is nested too deeply (more than {MAX_DEPTH} levels)") from None
    except json.JSONDecodeError as first:
        if not _looks_like_json_lines(text, first):
            raise RequestError(
                f"request file {path} is not valid JSON (line {first.lineno}, column {first.colno}: {first.msg})"
            ) from None
        return _load_json_lines(path, text)
    _check_depth(data, f"request file {path}")
    if isinstance(data, list) and len(data) > MAX_RECORDS:
        raise RequestError(f"request file {path} holds {len(data)} records; at most {MAX_RECORDS}")
    try:
        return parse_requests(data)
    except RequestError as e:
        raise RequestError(f"{path}: {e}") from None


def _read_limited(path: Path) -> str:
    """The file's text: a regular file (not /dev/zero, not a pipe) of at most MAX_FILE_BYTES."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise RequestError(f"request file {path} is not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise RequestError(f"request file {path} is {st.st_size} bytes; at most {MAX_FILE_BYTES}")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise RequestError(f"cannot read request file {path}: {e.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise RequestError(f"request file {path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(f"request file {path} is not UTF-8 text") from None


class _NotJson(ValueError):
    pass


def _no_constant(name: str) -> Any:
    """``NaN``, ``Infinity`` and ``-Infinity`` are not JSON (Python's reader accepts them)."""
    raise _NotJson(f"{name} is not a JSON value (numbers must be finite)")


def _looks_like_json_lines(text: str, error: json.JSONDecodeError) -> bool:
    """Several JSON values, one per line: the document ends after its first line's value."""
    if error.msg == "Extra data":
        return True
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        return False
    try:
        json.loads(lines[0], parse_constant=_no_constant)
    except (json.JSONDecodeError, RecursionError, _NotJson):
        return False
    return True


def _load_json_lines(path: Path, text: str) -> list[EditRequest]:
    """One record per non-empty line; every error names the file's own line number."""
    requests: list[EditRequest] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if len(requests) >= MAX_RECORDS:
            raise RequestError(f"request file {path} holds more than {MAX_RECORDS} records")
        try:
            rec = json.loads(line, parse_constant=_no_constant)
        except _NotJson as e:
            raise RequestError(f"request file {path}, line {lineno}: {e}") from None
        except json.JSONDecodeError as e:
            raise RequestError(f"request file {path}, line {lineno}, column {e.colno}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise RequestError(f"request file {path}, line {lineno}: nested too deeply") from None
        _check_depth(rec, f"request file {path}, line {lineno}")
        try:
            requests.append(parse_record(rec, len(requests)))
        except RequestError as e:
            raise RequestError(f"{path}, line {lineno}: {e}") from None
    if not requests:
        raise RequestError(f"{path}: the request file holds no records")
    return requests


def _check_depth(data: Any, where: str) -> None:
    """Refuse values nested deeper than MAX_DEPTH (iteratively: no recursion to exhaust)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (list, dict)):
            if depth > MAX_DEPTH:
                raise RequestError(f"{where} is nested too deeply (more than {MAX_DEPTH} levels)")
            items = value.values() if isinstance(value, dict) else value
            stack.extend((v, depth + 1) for v in items if isinstance(v, (list, dict)))
