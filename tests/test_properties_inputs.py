"""Generated inputs (Hypothesis) against the real request loader and the real command line.

Property, for request files (valid and invalid JSON / JSON lines, wrong types, huge numbers, lone
surrogates, control characters, NaN) and for argument vectors of the cheap commands (``ledger
list/search/show``, ``watch list``, request loading by ``edit``) on a small real workspace: either
the input is accepted and the result well formed, or the command exits 2 with exactly one line on
stderr and no traceback. Each ``main()`` costs about 0.1 s (building the parser), so the command-line
properties run a few hundred cases and the loader's a couple of thousand. No model is loaded inside the loops: ``edit --workspace MISSING`` reads
the requests before it opens anything, and the ledger commands read SQLite only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditor.cli import main
from auditor.model.requests import EditRequest, RequestError, load_requests

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# ---------------------------------------------------------------- values

hostile_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["\ud800", "x\udfffy", "\x1b[31m", "\x00", "\u202e", "{}", "{}{}", " ", "", "\x85"]),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x2FF, exclude_categories=()), max_size=8),
)
hostile_number = st.one_of(st.integers(), st.integers(min_value=2**63 - 2, max_value=2**70),
                           st.integers(min_value=-2**70, max_value=-2**63 + 2), st.floats(allow_nan=True),
                           st.booleans())
scalar = st.one_of(st.none(), hostile_text, hostile_number)
value = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                     st.dictionaries(hostile_text, inner, max_size=3)),
                     max_leaves=6)
GOOD = {"prompt": "The capital of {} is", "subject": "France", "target_new": "Rome", "target_true": "Paris",
        "paraphrases": ["{} has its capital at"], "neighborhood": [{"prompt": "Spain's capital is", "target": "Madrid"}],
        "case_id": "c1", "meta": {"source": "test"}}
FIELDS = [*GOOD, "requested_rewrite", "src", "alt", "answers", "rephrase", "loc", "loc_ans", "portability", "id",
          "paraphrase_prompts", "neighborhood_prompts", "ground_truth", "rephrase_prompt"]


@st.composite
def records(draw: Callable) -> Any:
    """A good flat record with a few fields replaced or added, or something else entirely."""
    if draw(st.integers(0, 9)) == 0:
        return draw(value)
    rec = dict(GOOD)
    for _ in range(draw(st.integers(0, 3))):
        rec[draw(st.sampled_from(FIELDS))] = draw(value)
    if draw(st.booleans()):
        rec = {k: v for k, v in rec.items() if k not in draw(st.sets(st.sampled_from(list(GOOD)), max_size=2))}
    return rec


@st.composite
def request_files(draw: Callable) -> bytes:
    recs = draw(st.lists(records(), min_size=0, max_size=3))
    form = draw(st.sampled_from(["list", "object", "lines", "broken", "bytes"]))
    if form == "bytes":
        return draw(st.binary(max_size=64))
    if form == "object" and recs:
        text = json.dumps(recs[0], allow_nan=True)
    elif form == "lines":
        text = "\n".join(json.dumps(r, allow_nan=True) for r in recs)
    else:
        text = json.dumps(recs, allow_nan=True)
    if form == "broken" and text:
        cut = draw(st.integers(0, len(text) - 1))
        text = text[:cut] + draw(st.sampled_from(["", "}", ",", "\n{", "NaN", "\x00"])) + text[cut + 1:]
    return text.encode("utf-8", "surrogatepass")


def well_formed(requests: list[EditRequest]) -> None:
    assert requests
    for r in requests:
        texts = [r.prompt, r.subject, r.target_new, r.target_true or "", *r.paraphrases,
                 *(t for p in (*r.neighborhood, *r.portability) for t in (p.prompt, p.target))]
        assert all(isinstance(t, str) for t in texts)
        for t in texts:
            t.encode("utf-8")  # no lone surrogate survives
        assert r.prompt.count("{}") == 1 and r.subject.strip() and r.target_new.strip()
        assert isinstance(r.meta, dict) and isinstance(r.case_id, str)
        json.dumps(r.to_json(), allow_nan=False)  # storable in the ledger as JSON


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str) -> None:
    assert code == 2, (code, err)
    assert err.startswith("edit-auditor: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


# ---------------------------------------------------------------- request files


@settings(max_examples=1200, **SETTINGS)
@given(data=request_files())
def test_generated_request_files_are_loaded_well_formed_or_refused_in_one_line(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "requests.json"
    path.write_bytes(data)
    try:
        requests = load_requests(path)
    except RequestError as e:
        text = str(e)
        assert text and "\n" not in text and str(path) in text, text
        text.encode("utf-8")  # the message itself is printable as UTF-8
    else:
        well_formed(requests)


@settings(max_examples=120, **SETTINGS)
@given(data=request_files())
def test_generated_request_files_through_the_command_line(data: bytes, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "requests.json"
    path.write_bytes(data)
    missing = tmp_path / "no-such-workspace"
    code, out, err = cli(["edit", "--workspace", str(missing), "--requests", str(path)], capsys)
    assert_one_line_error(code, err)  # a bad file, or (a good one) the missing workspace
    assert out == "" and not missing.exists()
    try:
        load_requests(path)
    except RequestError:
        assert str(path) in err
    else:
        assert "workspace" in err.lower() or "no-such-workspace" in err


# ---------------------------------------------------------------- argument vectors


@pytest.fixture(scope="module")
def small_workspace(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A real workspace on a tiny Llama with two recorded dry runs and a watched answer."""
    import os

    from conftest import save_tiny

    root = tmp_path_factory.mktemp("props")
    old = os.environ.get("EDIT_AUDITOR_CACHE")
    os.environ["EDIT_AUDITOR_CACHE"] = str(root / "cache")
    try:
        ws = root / "ws"
        assert main(["workspace", "init", str(save_tiny("llama", root / "tiny", tokenizer_dir)), str(ws),
                     "--device", "cpu"]) == 0
        reqs = root / "r.json"
        reqs.write_text(json.dumps([{"prompt": "The capital of {} is", "subject": "Fr\x1b[31mance",
                                     "target_new": "Rome"},
                                    {"prompt": "{} plays the", "subject": "Miles Davis", "target_new": "violin"}]))
        hp = {"layer": 1, "mom2_n_tokens": 1024, "mom2_seq_len": 64, "v_num_grad_steps": 2, "context_n": 1,
              "context_len": 3}
        assert main(["edit", "--workspace", str(ws), "--requests", str(reqs), "--dry-run", "--hparams",
                     json.dumps(hp), "--device", "cpu"]) == 0
        assert main(["watch", "add", "-w", str(ws), "--prompt", "The sky is\x07", "--answer", "blue"]) == 0
    finally:
        if old is None:
            os.environ.pop("EDIT_AUDITOR_CACHE", None)
        else:
            os.environ["EDIT_AUDITOR_CACHE"] = old
    return ws


ints = st.one_of(st.integers(-5, 5).map(str), st.sampled_from(["10" * 12, str(10**20), "-0", "1e3", "0x10", " 3",
                                                                "٣", "", "nan", str(2**63), str(2**63 - 1)]))
# ("--" is left out: after it "--json" is a search word, not the flag the property reads)
words = st.one_of(st.text(max_size=8).filter(lambda w: w != "--"),
                  st.sampled_from(["Rome", "\x1b[2J", "\ud800", '"', "*", "OR", "NEAR(", "-", "France", "''"]))


@st.composite
def argvs(draw: Callable, ws: str) -> list[str]:
    command = draw(st.sampled_from(["list", "search", "show", "watch"]))
    if command == "list":
        argv = ["ledger", "list", "-w", ws]
        if draw(st.booleans()):
            argv += ["--limit", draw(ints)]
        if draw(st.booleans()):
            argv += ["--status", draw(st.sampled_from(["applied", "dry-run", "bogus"]))]
    elif command == "search":
        argv = ["ledger", "search", "-w", ws, draw(words)]
        if draw(st.booleans()):
            argv += ["--limit", draw(ints)]
    elif command == "show":
        argv = ["ledger", "show", "-w", ws, draw(ints)]
    else:
        argv = ["watch", "list", "-w", ws] + draw(st.sampled_from([[], ["--history"]]))
    if draw(st.booleans()):
        argv.append("--json")
    if draw(st.integers(0, 5)) == 0:
        argv.insert(draw(st.integers(1, len(argv))), draw(st.sampled_from(["--bogus", "-x", "--limit", "\x1b"])))
    return argv


@settings(max_examples=250, **SETTINGS)
@given(data=st.data())
def test_generated_arguments_of_the_cheap_commands(small_workspace: Path, data: st.DataObject,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    argv = data.draw(argvs(str(small_workspace)))
    code, out, err = cli(argv, capsys)
    if code == 0:
        assert "Traceback" not in err
        if "--json" in argv:
            json.loads(out)  # exact JSON
        else:
            assert not any(ord(c) < 0x20 and c != "\n" for c in out), out  # no raw control character
        out.encode("utf-8")
    else:
        assert_one_line_error(code, err)
