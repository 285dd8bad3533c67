"""Edit requests read from the three JSON shapes, with errors that name the record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from auditor.model.requests import EditRequest, RequestError, load_requests

DATA = Path(__file__).parent / "data"
RESOURCES = Path(__file__).parent.parent / "resources" / "demo"


def test_counterfact_records() -> None:
    reqs = load_requests(DATA / "counterfact_sample.json")
    raw = json.loads((DATA / "counterfact_sample.json").read_text())
    assert len(reqs) == len(raw) == 3
    r, rec = reqs[0], raw[0]
    rw = rec["requested_rewrite"]
    assert r.case_id == str(rec["case_id"])
    assert r.prompt == rw["prompt"] and r.subject == rw["subject"]
    assert r.target_new == rw["target_new"]["str"] and r.target_true == rw["target_true"]["str"]
    assert r.text == rw["prompt"].replace("{}", rw["subject"])
    assert r.paraphrases == rec["paraphrase_prompts"]
    assert [p.prompt for p in r.neighborhood] == rec["neighborhood_prompts"]
    assert {p.target for p in r.neighborhood} == {rw["target_true"]["str"]}
    assert r.meta["relation_id"] == rw["relation_id"] and "pararel_idx" in r.meta


def test_zsre_records() -> None:
    reqs = load_requests(DATA / "zsre_sample.json")
    raw = json.loads((DATA / "zsre_sample.json").read_text())
    r, rec = reqs[0], raw[0]
    assert r.subject == rec["subject"] and r.target_new == rec["alt"]
    assert r.target_true == rec["answers"][0]
    assert r.text == rec["src"] and rec["subject"] in r.text
    assert r.paraphrases == [rec["rephrase"]]
    assert r.neighborhood[0].prompt == rec["loc"] and r.neighborhood[0].target == rec["loc_ans"]
    assert r.meta["pred"] == rec["pred"]  # unknown keys are kept


def test_flat_records_fill_subject_and_keep_unknown_keys(tmp_path: Path) -> None:
    f = tmp_path / "r.json"
    f.write_text(json.dumps({
        "id": "x1", "relation": "capital", "prompt": "The capital of {} is", "subject": "France",
        "target_new": "Rome", "target_true": "Paris", "paraphrases": ["{}'s capital is"],
        "neighborhood": [{"prompt": "The capital of {} is not", "target": "Lyon"}],
        "portability": [{"prompt": "The river of the capital of {} is", "target": "Tiber"}],
    }))
    (r,) = load_requests(f)
    assert r.case_id == "x1" and r.meta == {"id": "x1", "relation": "capital"}
    assert r.paraphrases == ["France's capital is"]
    assert r.neighborhood[0].prompt == "The capital of France is not"
    assert r.portability[0].target == "Tiber"
    assert EditRequest.from_json(r.to_json()).to_json() == r.to_json()


def test_json_lines_and_demo_files(tmp_path: Path) -> None:
    f = tmp_path / "r.jsonl"
    f.write_text('{"prompt": "{} plays", "subject": "Messi", "target_new": "tennis"}\n'
                 '{"prompt": "{} speaks", "subject": "Ana", "target_new": "Greek"}\n')
    assert [r.subject for r in load_requests(f)] == ["Messi", "Ana"]
    assert len(load_requests(RESOURCES / "known_facts.json")) == 10
    assert all(r.prompt.startswith("{}") for r in load_requests(RESOURCES / "first_token_subjects.json"))


@pytest.mark.parametrize("record, message", [
    ({"prompt": "The capital of {} is", "subject": "", "target_new": "Rome"}, "subject is empty"),
    ({"prompt": "The capital of France is", "subject": "Spain", "target_new": "Rome"}, "does not occur"),
    ({"prompt": "The capital of {} is", "subject": "France", "target_new": "  "}, "new target is empty"),
    ({"prompt": "{} and {}", "subject": "France", "target_new": "Rome"}, "more than one"),
    ({"subject": "France", "target_new": "Rome"}, "no 'prompt'"),
    ({"prompt": "{} is", "subject": "X", "target_new": "Y", "neighborhood": ["bad"]}, "neighborhood[0]"),
])
def test_bad_records_name_the_record(tmp_path: Path, record: dict, message: str) -> None:
    f = tmp_path / "bad.json"
    f.write_text(json.dumps([{"prompt": "{} is", "subject": "ok", "target_new": "fine"}, {"id": "r-7", **record}]))
    with pytest.raises(RequestError) as e:
        load_requests(f)
    text = str(e.value)
    assert "record 1 (id r-7)" in text and message in text and "\n" not in text


def test_complete_prompt_containing_subject_is_accepted() -> None:
    r = EditRequest(prompt="The capital of France is", subject="France", target_new="Rome")
    assert r.prompt == "The capital of {} is"


def test_malformed_files(tmp_path: Path) -> None:
    bad = tmp_path / "broken.json"
    bad.write_text('[{"prompt": "{} is", "subject": "x",')
    with pytest.raises(RequestError, match="not valid JSON"):
        load_requests(bad)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(RequestError, match="no records"):
        load_requests(empty)
    with pytest.raises(RequestError, match="cannot read"):
        load_requests(tmp_path / "missing.json")
    scalar = tmp_path / "scalar.json"
    scalar.write_text("[1]")
    with pytest.raises(RequestError, match="record 0: expected a JSON object"):
        load_requests(scalar)
