"""Issue 17, "normal paths that crash, bad inputs accepted, hostile values", through the real command
line (``auditor.cli.main`` in process), on tiny random checkpoints (fast) and the demo model (slow).

* MEMIT and AlphaEdit batches of exactly one request (and an odd last batch) hash and save their
  deltas, whatever the strides of the tensors (``K.T`` of a single key); a workspace takes an applied
  batch back out of memory when recording it fails;
* a batch the guard rejects prints its summary and exits 1; a failed batch inside a sequence stops
  the run (exit 1, the reason in the final JSON line); ``--stop-on`` is validated; NaN crosses;
* a prompt longer than a GPT-2 context, ``--layer 999``, ``--samples 1000000000``, ``--limit -1``,
  ids of 10^20, request files with a string ``meta``, non-string subjects, lone surrogates: one
  line on stderr, exit 2; control characters from requests never reach the terminal raw.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import pytest
import torch

from auditor.cli import main
from auditor.engine.deltas import Delta, DeltaSet, load_delta
from auditor.measure.guard import CollapseGuard, batch_guard_reasons
from auditor.model.checkpoint import fingerprint_model
from auditor.model.requests import EditRequest
from auditor.run.monitor import MonitorError, Thresholds, parse_stop_on
from auditor.run.workspace import Workspace

HP = {"layers": [0, 1], "mom2_n_tokens": 2048, "mom2_seq_len": 64, "v_num_grad_steps": 4,
      "context_templates": ["{}", "The following is a fact. {}"]}
ROME_HP = {"layer": 1, "mom2_n_tokens": 2048, "mom2_seq_len": 64, "v_num_grad_steps": 4, "context_n": 2,
           "context_len": 4}
FACTS = [
    {"prompt": "The capital of {} is", "subject": "France", "target_new": "Rome", "target_true": "Paris"},
    {"prompt": "{} plays the", "subject": "Miles Davis", "target_new": "violin", "target_true": "trumpet"},
    {"prompt": "{} was written in", "subject": "Hamlet", "target_new": "Latin", "target_true": "English"},
    {"prompt": "{} is located in", "subject": "Angola", "target_new": "Antarctica", "target_true": "Africa"},
]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``edit-auditor ARGV`` in process: exit code, stdout, stderr."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code if isinstance(e.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert err.startswith("edit-auditor: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def tiny_ws(tiny_checkpoint: Callable[..., Path], isolated_cache: Path, tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    assert main(["workspace", "init", str(tiny_checkpoint("llama")), str(ws), "--device", "cpu"]) == 0
    return ws


@pytest.mark.parametrize("command", [
    ["edit"], ["edit", "--method", "memit"], ["edit", "--dry-run"], ["sequence", "--out", "SEQ"],
])
def test_a_model_beside_a_workspace_is_refused_not_passed_over(command: list[str], tiny_ws: Path,
                                                                tiny_checkpoint: Callable[..., Path],
                                                                tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``edit MODEL --workspace WS`` once edited WS's base and said nothing of MODEL (sequence
    refused it, with a message that also said "not both" when neither was named): every command
    that takes either now refuses both, and neither, in one line, before anything is loaded."""
    requests = _write(tmp_path / "r.json", FACTS[:1])
    argv = [a.replace("SEQ", str(tmp_path / "seq.jsonl")) for a in command] + ["--requests", str(requests)]
    ledger = (tiny_ws / "ledger.db").read_bytes()
    other = str(tiny_checkpoint("gpt2"))
    one_line_error(*run(argv[:1] + [other] + argv[1:] + ["--workspace", str(tiny_ws)], capsys)[::2],
                   "not both")
    one_line_error(*run(argv, capsys)[::2], "name a MODEL", "or a --workspace")
    assert "not both" not in run(argv, capsys)[2]
    assert (tiny_ws / "ledger.db").read_bytes() == ledger and not (tmp_path / "seq.jsonl").exists()


# ---------------------------------------------------------------- deltas of any stride


@pytest.mark.parametrize("view", ["transpose_of_one_row", "column_slice", "step_slice", "scalar", "empty"])
def test_delta_hash_and_file_do_not_depend_on_the_tensors_strides(view: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    make = {"transpose_of_one_row": lambda: torch.randn(1, 48, dtype=torch.float64).T,  # K.T of one request
            "column_slice": lambda: torch.randn(48, 5)[:, 2:3],
            "step_slice": lambda: torch.randn(48, 6)[:, ::2],
            "scalar": lambda: torch.tensor(3.0),
            "empty": lambda: torch.randn(48, 0)}[view]
    odd = make()
    plain = odd.clone(memory_format=torch.contiguous_format)
    a = DeltaSet([Delta.factored("w", False, torch.randn(32, 1), torch.randn(48, 1))], {"keys.w": odd})
    b = DeltaSet(a.parts, {"keys.w": plain})
    assert a.content_hash() == b.content_hash()
    a.save(tmp_path / "d.safetensors")
    back = load_delta(tmp_path / "d.safetensors")
    assert back.content_hash() == a.content_hash() and torch.equal(back.tensors["keys.w"], plain)
    assert [p.name for p in tmp_path.iterdir()] == ["d.safetensors"]  # no temporary file left
    full = Delta("w", True, None, None, full=torch.randn(6, 8)[:, ::2])
    assert full.content_hash() == Delta("w", True, None, None, full=full.full.contiguous()).content_hash()


# ---------------------------------------------------------------- batches of one, rejected, rolled back


@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_batches_of_one_and_an_odd_last_batch_are_recorded(method: str, tiny_ws: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    facts = _write(tmp_path / "facts.json", FACTS[:3])
    code, out, err = run(["edit", "--workspace", str(tiny_ws), "--requests", str(facts), "--method", method,
                          "--batch-size", "2", "--hparams", json.dumps(HP), "--allow-collapse", "--device", "cpu",
                          "--json"], capsys)
    assert code == 0, err
    summaries = [x for x in map(json.loads, out.splitlines()) if x.get("summary") == "batch"]
    assert [s["n_requests"] for s in summaries] == [2, 1] and all(s["status"] == "applied" for s in summaries)
    ws = Workspace.open(tiny_ws, device="cpu")
    try:
        entries = ws.ledger.entries()
        assert [e["n_requests"] for e in entries] == [2, 1]
        last = ws.ledger.load_delta(entries[-1].delta_hash)
        assert last.content_hash() == entries[-1].delta_hash == summaries[-1]["delta_hash"]
        assert ws.verify()["ok"] and ws.replay()["match"]
    finally:
        ws.close()


def test_a_batch_whose_recording_fails_leaves_nothing_applied(tiny_ws: Path) -> None:
    ws = Workspace.open(tiny_ws, device="cpu")
    try:
        before, n = fingerprint_model(ws.lm.model), len(ws.ledger)

        def broken_hook(_ws: Workspace, _result: object) -> dict:
            raise OSError(28, "No space left on device")

        ws.after_apply.append(broken_hook)
        with pytest.raises(OSError):
            ws.edit_batch([EditRequest(**FACTS[0])], method="memit", hparams=HP, allow_collapse=True)
        assert fingerprint_model(ws.lm.model) == before == ws.fingerprint and len(ws.ledger) == n
        ws.after_apply.remove(broken_hook)
        _result, entry = ws.edit_batch([EditRequest(**FACTS[0])], method="memit", hparams=HP, allow_collapse=True)
        assert entry.status == "applied" and ws.verify()["ok"] and ws.replay()["match"]
    finally:
        ws.close()


def test_a_rejected_batch_prints_its_summary_and_exits_1(tiny_checkpoint: Callable[..., Path], isolated_cache: Path,
                                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    facts = _write(tmp_path / "facts.json", FACTS[:3])
    hp = {**HP, "mom2_update_weight": 0.01}  # a weak preservation term: an update the guard refuses
    code, out, err = run(["edit", str(tiny_checkpoint("llama")), "--requests", str(facts), "--method", "memit",
                          "--hparams", json.dumps(hp), "--device", "cpu"], capsys)
    assert code == 1 and "Traceback" not in err and "KeyError" not in err, err
    assert "batch 1: rejected" in out and "batch 1: rejected: collapse risk" in err


# ---------------------------------------------------------------- sequences


def test_a_failed_batch_stops_a_sequence(tiny_ws: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    requests = FACTS[:2] + [{**FACTS[2], "prompt": "The capital of {} is", "subject": "France", "target_new": "Oslo"},
                            FACTS[0]]  # step 2 asks one prompt for two answers: it cannot be computed
    out = tmp_path / "run.jsonl"
    code, _out, err = run(["sequence", "--workspace", str(tiny_ws), "--requests", str(_write(tmp_path / "r.json", requests)),
                           "--method", "memit", "--batch-size", "2", "--hparams", json.dumps(HP), "--allow-collapse",
                           "--stop-on", "none", "--device", "cpu", "--out", str(out)], capsys)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    final = lines[-1]
    assert code == 1 and "Traceback" not in err, err
    assert final["final"] and final["stopped"] and final["failed"] and final["stopped_at_step"] == 2, final
    assert "one update cannot give two answers" in final["reason"] and final["edits_applied"] == 2
    assert lines[-2]["step"] == 2 and "two answers" in lines[-2]["failed"]
    assert "stopped at step 2" in err and "done:" not in err


def test_a_rejected_rome_edit_stops_a_sequence(tiny_ws: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Random weights give ROME tiny denominators: the guard refuses the first edit, and the run
    must say so and stop instead of reporting "done" with fewer edits than requested."""
    out = tmp_path / "run.jsonl"
    code, _out, err = run(["sequence", "--workspace", str(tiny_ws), "--requests",
                           str(_write(tmp_path / "r.json", FACTS[:2])), "--hparams", json.dumps(ROME_HP),
                           "--stop-on", "none", "--device", "cpu", "--out", str(out)], capsys)
    final = json.loads(out.read_text().splitlines()[-1])
    ws = Workspace.open(tiny_ws, device="cpu")
    statuses = [e.status for e in ws.ledger.entries()]
    ws.close()
    assert statuses == ["rejected"], statuses
    assert code == 1 and final["stopped"] and final["failed"] and final["stopped_at_step"] == 1, final
    assert "entry 1 rejected: collapse risk" in final["reason"] and final["edits_applied"] == 0
    assert "stopped at step 1" in err


@pytest.mark.parametrize("spec, words", [
    ("ppl=nan", ["ppl=nan", "finite"]), (",,,", ["empty item"]), ("pll", ["unknown --stop-on figure 'pll'"]),
    ("norm=-1", ["not negative"]), ("ppl=inf", ["finite"]), ("retention=1.5", ["between 0 and 1"]),
    ("ppl,", ["empty item"]),
])
def test_stop_on_is_validated(spec: str, words: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    requests = _write(tmp_path / "r.json", FACTS[:1])
    code, _out, err = run(["sequence", "demo", "--requests", str(requests), "--stop-on", spec,
                           "--out", str(tmp_path / "o.jsonl")], capsys)
    one_line_error(code, err, *words)
    assert not (tmp_path / "o.jsonl").exists()


def test_a_nan_figure_crosses_every_threshold() -> None:
    th = Thresholds()
    for figure in ("ppl", "retention", "watch", "norm", "cond", "trend"):
        assert th.crossed(figure, math.nan) and not th.crossed(figure, None)
    names, _ = parse_stop_on("ppl=2,norm")
    assert names == ["ppl", "norm"]
    with pytest.raises(MonitorError):
        parse_stop_on("")
    guard = CollapseGuard()
    assert len(guard.reasons(math.nan, math.nan, denominator_ratio=math.nan)) == 3
    layers = {"layers": [{"update_ratio": 0.01, "layer": 3}, {"update_ratio": math.nan, "layer": 4}]}
    assert batch_guard_reasons(guard, layers, None) == ["update norm / weight norm nan > 0.5 at layer 4"]
    layers["layers"].reverse()  # wherever the NaN sits
    assert batch_guard_reasons(guard, layers, math.nan)[0].endswith("at layer 4")


# ---------------------------------------------------------------- context, layers, bounds


def test_prompts_longer_than_the_context_are_refused(tiny_checkpoint: Callable[..., Path], isolated_cache: Path,
                                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gpt2 = str(tiny_checkpoint("gpt2"))  # 128 positions
    long = "word " * 300
    for method in ("rome", "memit"):
        requests = _write(tmp_path / "long.json", [{**FACTS[0], "prompt": long + "{} is"}])
        code, _out, err = run(["edit", gpt2, "--requests", str(requests), "--method", method, "--device", "cpu"],
                              capsys)
        one_line_error(code, err, "tokens", "at most 128")
    requests = _write(tmp_path / "para.json", [{**FACTS[0], "paraphrases": [long + "France"]}])
    code, _out, err = run(["edit", gpt2, "--requests", str(requests), "--device", "cpu"], capsys)
    one_line_error(code, err, "paraphrase 1", "at most 128")
    code, _out, err = run(["trace", gpt2, "--prompt", long + "France is", "--subject", "France", "--device", "cpu"],
                          capsys)
    one_line_error(code, err, "--prompt", "at most 128")
    code, _out, err = run(["trace", gpt2, "--prompt", "France is", "--subject", "France", "--layer", "999",
                           "--device", "cpu"], capsys)
    one_line_error(code, err, "--layer 999", "2 layers")


@pytest.mark.parametrize("argv, words", [
    (["trace", "demo", "--prompt", "x", "--subject", "x", "--samples", "1000000000"], ["--samples", "at most 1000"]),
    (["trace", "demo", "--prompt", "x", "--subject", "x", "--samples", "0"], ["--samples", "at least 1"]),
    (["edit", "demo", "--requests", "r.json", "--layer", "99999999999999999999"], ["--layer"]),
    (["edit", "demo", "--requests", "r.json", "--batch-size", "-2"], ["--batch-size", "at least 1"]),
    (["ledger", "list", "-w", "ws", "--limit", "-1"], ["--limit", "at least 1"]),
    (["ledger", "search", "-w", "ws", "x", "--limit", "0"], ["--limit", "at least 1"]),
    (["ledger", "show", "-w", "ws", str(10**20)], ["ID", "at most 9223372036854775807"]),
    (["revert", "-w", "ws", "-5"], []),
    (["apply-reviewed", "-w", "ws", "1e3"], ["invalid int value: '1e3'"]),
    (["watch", "remove", "-w", "ws", str(10**20)], ["ID"]),
    (["sequence", "demo", "--requests", "r.json", "--out", "o", "--batch-size", "0"], ["--batch-size"]),
    (["ppl", "demo", "--tokens", "-5"], ["--tokens"]),
])
def test_integer_arguments_are_range_checked(argv: list[str], words: list[str], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _out, err = run(argv, capsys)
    one_line_error(code, err, *words)


# ---------------------------------------------------------------- hostile request files and output


@pytest.mark.parametrize("record, words", [
    ({**FACTS[0], "meta": "a string"}, ["field 'meta'", "JSON object"]),
    ({**FACTS[0], "subject": 7, "paraphrases": ["{} is a city"]}, ["field 'subject'", "string"]),
    ({**FACTS[0], "subject": "\ud800"}, ["field 'subject'", "surrogate"]),
    ({**FACTS[0], "meta": {"note": "\udfff"}}, ["meta.note", "surrogate"]),
    ({**FACTS[0], "case_id": 10**20}, ["field 'case_id'", "at most"]),
    ({**FACTS[0], "id": -10**20}, ["field 'id'"]),
    ({"requested_rewrite": {"prompt": "{} is", "subject": ["x"], "target_new": {"str": "y"}}},
     ["requested_rewrite.subject"]),
    ({**FACTS[0], "neighborhood": [{"prompt": 5, "target": "x"}]}, ["neighborhood[0]"]),
])
def test_hostile_request_files_are_refused_naming_field_and_file(record: dict, words: list[str], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps([record]))  # json.dumps writes lone surrogates as \\udXXX escapes
    code, _out, err = run(["edit", "demo", "--requests", str(path)], capsys)
    one_line_error(code, err, str(path), *words)


def test_nan_in_a_request_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nan.jsonl"
    path.write_text(json.dumps(FACTS[0]) + "\n" + '{"prompt": "{} is", "subject": "x", "target_new": "y", "w": NaN}\n')
    code, _out, err = run(["edit", "demo", "--requests", str(path)], capsys)
    one_line_error(code, err, "line 2", "NaN")


ESC = "\x1b[2J\x1b]0;pwned\x07"


def test_control_characters_from_requests_are_not_printed_raw(tiny_ws: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    subject = f"Fr{ESC}ance\u202e"
    requests = _write(tmp_path / "r.json", [{"prompt": "The capital of {} is", "subject": subject,
                                             "target_new": f"Rome{ESC}"}])
    code, _out, err = run(["edit", "--workspace", str(tiny_ws), "--requests", str(requests), "--dry-run",
                           "--hparams", json.dumps(ROME_HP), "--device", "cpu"], capsys)
    assert code == 0, err
    assert run(["watch", "add", "-w", str(tiny_ws), "--prompt", f"The sky{ESC} is", "--answer", f"blue{ESC}"],
               capsys)[0] == 0
    for argv in (["ledger", "list", "-w", str(tiny_ws)], ["ledger", "show", "-w", str(tiny_ws), "1"],
                 ["ledger", "search", "-w", str(tiny_ws), "Rome"], ["watch", "list", "-w", str(tiny_ws)]):
        code, out, err = run(argv, capsys)
        assert code == 0, err
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out, (argv, out)
        assert "\\x1b" in out, (argv, out)  # shown, escaped
    code, out, _err = run(["ledger", "show", "-w", str(tiny_ws), "1", "--json"], capsys)
    assert code == 0 and json.loads(out)["subject"] == subject  # JSON stays exact
    code, out, _err = run(["watch", "list", "-w", str(tiny_ws), "--json"], capsys)
    assert code == 0 and f"blue{ESC}" in out.replace("\\u001b", "\x1b").replace("\\u0007", "\x07")


# ---------------------------------------------------------------- the demo model


@pytest.mark.slow
def test_demo_memit_and_alphaedit_batches_of_one(demo_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """What the window's edit panel runs: one request per update, on the demo model, recorded in a
    workspace (the odd last batch is covered on the tiny model above)."""
    hp = json.dumps({"layers": [4, 5], "v_num_grad_steps": 3})
    ws = tmp_path / "ws"
    assert main(["workspace", "init", str(demo_dir), str(ws), "--device", "cpu"]) == 0
    for method, fact in (("memit", FACTS[0]), ("alphaedit", FACTS[3])):
        one = _write(tmp_path / f"{method}.json", [fact])
        code, out, err = run(["edit", "--workspace", str(ws), "--requests", str(one), "--method", method,
                              "--hparams", hp, "--allow-collapse", "--device", "cpu", "--json"], capsys)
        assert code == 0, err
        summary = [x for x in map(json.loads, out.splitlines()) if x.get("summary")]
        assert [(s["n_requests"], s["status"]) for s in summary] == [(1, "applied")]
    code, out, err = run(["ledger", "verify", "-w", str(ws)], capsys)
    assert code == 0, out + err
    w = Workspace.open(ws, device="cpu")
    try:
        entries = w.ledger.entries()
        assert [(e["method"], e["n_requests"]) for e in entries] == [("memit", 1), ("alphaedit", 1)]
        keys = w.ledger.load_delta(entries[-1].delta_hash).tensors  # AlphaEdit's key of one request, (in, 1)
        assert [tuple(t.shape)[1] for t in keys.values()] == [1, 1]
    finally:
        w.close()
