"""``edit-auditor trace`` through ``main()``: JSON heatmaps, the PNG, one-line errors with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from auditor.cli import main


def test_trace_writes_json_and_png(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    png = tmp_path / "trace.png"
    code = main(["trace", "demo", "--device", "cpu", "--prompt", "The capital of {} is", "--subject", "France",
                 "--kind", "mlp", "--samples", "2", "--layer", "4", "--json", "--png", str(png)])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    (trace,) = out["traces"]
    assert trace["kind"] == "mlp" and trace["answer"].strip() == "Paris" and trace["samples"] == 2
    assert len(trace["effects"]) == 5 and all(len(row) == 30 for row in trace["effects"])
    assert trace["clean_prob"] > trace["corrupted_prob"]
    assert trace["precision"] == "float32"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    code = main(["trace", "demo", "--device", "cpu", "--prompt", "The capital of {} is", "--subject", "France",
                 "--kind", "mlp", "--samples", "2", "--precision", "bfloat16", "--json"])
    (half,) = json.loads(capsys.readouterr().out)["traces"]
    assert code == 0 and half["precision"] == "bfloat16" and half["effects"] != trace["effects"]
    assert max(abs(a - b) for ra, rb in zip(half["effects"], trace["effects"]) for a, b in zip(ra, rb)) < 0.02


@pytest.mark.parametrize("args,message", [
    (["--prompt", "The capital of France is", "--subject", "Germany"], "does not occur in the prompt"),
    (["--prompt", "The capital of France is"], "--prompt and --subject are required"),
    (["--prompt", "The capital of France is", "--subject", "France", "--samples", "0"], "at least 1"),
    (["--prompt", "The capital of France is", "--subject", "France", "--png", "/no/such/dir/x.png"], "no such folder"),
    (["--prompt", "The capital of France is", "--subject", "France", "--kind", "mlpp"], "invalid choice"),
    (["--prompt", "The capital of France is", "--subject", "France", "--precision", "int8"], "invalid choice"),
])
def test_bad_input_is_one_line_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    if "--kind" in args or "--precision" in args or "--samples" in args:  # argparse's own error (range-checked types)
        with pytest.raises(SystemExit) as e:
            main(["trace", "demo", *args])
        assert e.value.code == 2
    else:
        assert main(["trace", "demo", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("edit-auditor: error:")

