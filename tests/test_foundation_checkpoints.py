"""Checkpoints in: pickle refusal, broken folders and GGUF files, fingerprints, sharded safetensors.

Every broken input must give one clear line (a :class:`CheckpointError` from the library, and
``edit-auditor: error: ...`` with exit code 2 from the command line), never a traceback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

from auditor.cli import main
from auditor.model.checkpoint import CheckpointError, demo_gguf, fingerprint_model, load_model

# ---------------------------------------------------------------- broken inputs


def pickle_checkpoint(folder: Path) -> Path:
    """The same tiny model with its weights as ``pytorch_model.bin`` instead of safetensors."""
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def no_weights(folder: Path) -> Path:
    (folder / "model.safetensors").unlink()
    return folder


def truncated_safetensors(folder: Path) -> Path:
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return folder


def unknown_architecture(folder: Path) -> Path:
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "mamba"
    cfg["architectures"] = ["MambaForCausalLM"]
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def missing_tensor(folder: Path) -> Path:
    """A valid safetensors file without one down-projection: transformers alone would fill it randomly."""
    path = folder / "model.safetensors"
    state = load_file(path)
    del state["model.layers.1.mlp.down_proj.weight"]
    save_file(state, path, metadata={"format": "pt"})
    return folder


def missing_shard(folder: Path) -> Path:
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}})
    )
    return folder


BROKEN: dict[str, tuple[Callable[[Path], Path], str]] = {
    "pickle": (pickle_checkpoint, "pickle"),
    "no weights": (no_weights, "no *.safetensors"),
    "truncated safetensors": (truncated_safetensors, "corrupt safetensors"),
    "unknown architecture": (unknown_architecture, "unsupported architecture 'mamba'"),
    "missing shard": (missing_shard, "missing"),
    "missing tensor": (missing_tensor, "lack 1 tensor(s) the model needs, e.g. model.layers.1.mlp.down_proj.weight"),
}


@pytest.fixture
def truncated_gguf(tmp_path: Path, isolated_cache: Path) -> Path:
    """The first megabyte of the demo's GGUF file (the cache is isolated: nothing is imported)."""
    out = tmp_path / "broken.gguf"
    with open(demo_gguf(), "rb") as f:
        out.write_bytes(f.read(1 << 20))
    return out


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_folder_gives_one_line_checkpoint_error(case: str, tiny_checkpoint: Callable[..., Path]) -> None:
    breaker, expected = BROKEN[case]
    folder = breaker(tiny_checkpoint("llama"))
    with pytest.raises(CheckpointError) as err:
        load_model(folder, device="cpu")
    message = str(err.value)
    assert expected in message and str(folder) in message
    assert "\n" not in message


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_folder_through_the_cli(case: str, tiny_checkpoint: Callable[..., Path],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    folder = BROKEN[case][0](tiny_checkpoint("llama"))
    capsys.readouterr()  # drop the progress bars of saving the checkpoint
    assert main(["info", str(folder), "--device", "cpu"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("edit-auditor: error: ") and err.count("\n") == 1
    assert BROKEN[case][1] in err and "Traceback" not in err


def test_truncated_gguf_gives_one_line_error(truncated_gguf: Path, isolated_cache: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        load_model(truncated_gguf, device="cpu")
    assert "GGUF" in str(err.value) and "\n" not in str(err.value)
    assert not any((isolated_cache / "models").glob("*/config.json"))  # nothing half-imported


def test_truncated_gguf_through_the_console_script(truncated_gguf: Path) -> None:
    """A real process: exit code 2, exactly one line on stderr, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "auditor.cli", "info", str(truncated_gguf), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith("edit-auditor: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_bad_device_and_missing_path_are_one_line_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["info", str(tmp_path / "nowhere"), "--device", "cpu"]) == 2
    assert main(["info", str(tmp_path), "--device", "tpu"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith("edit-auditor: error: ") for line in lines)


# ---------------------------------------------------------------- pickle opt-in


def test_pickle_loads_only_with_the_opt_in(tiny_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    reference = load_model(tiny_checkpoint("llama", tmp_path / "safe"), device="cpu")
    folder = pickle_checkpoint(tiny_checkpoint("llama", tmp_path / "pickled"))
    with pytest.raises(CheckpointError, match="--allow-pickle"):
        load_model(folder, device="cpu")
    lm = load_model(folder, device="cpu", allow_pickle=True)
    assert lm.fingerprint == reference.fingerprint


# ---------------------------------------------------------------- fingerprints


def nudge_one_weight(folder: Path) -> None:
    """Move one element of one tensor in the saved safetensors by one ulp (towards +inf)."""
    path = folder / "model.safetensors"
    state = load_file(path)
    name = sorted(k for k in state if k.endswith("mlp.down_proj.weight"))[0]
    t = state[name].clone()
    t[0, 0] = torch.nextafter(t[0, 0], torch.tensor(float("inf")))
    assert t[0, 0] != state[name][0, 0]
    state[name] = t
    save_file(state, path, metadata={"format": "pt"})


def test_fingerprint_survives_a_copy_and_sees_one_ulp(tiny_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    original = tiny_checkpoint("llama", tmp_path / "a")
    copy = tmp_path / "b"
    shutil.copytree(original, copy)
    fp = load_model(original, device="cpu").fingerprint
    assert fp.startswith("sha256:")
    assert load_model(copy, device="cpu").fingerprint == fp
    nudge_one_weight(copy)
    assert load_model(copy, device="cpu").fingerprint != fp


def test_fingerprint_of_a_model_in_memory_sees_one_ulp(tiny_checkpoint: Callable[..., Path]) -> None:
    lm = load_model(tiny_checkpoint("gpt2"), device="cpu")
    w = lm.spec.weight(lm.model, 0)
    with torch.no_grad():
        old = w[0, 0].clone()
        w[0, 0] = torch.nextafter(old, torch.tensor(float("-inf")))
        assert fingerprint_model(lm.model) != lm.fingerprint
        w[0, 0] = old
    assert fingerprint_model(lm.model) == lm.fingerprint


# ---------------------------------------------------------------- sharded folders and dtypes


def test_sharded_safetensors_load_like_one_file(tiny_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    single = load_model(tiny_checkpoint("qwen2", tmp_path / "single"), device="cpu")
    sharded = tiny_checkpoint("qwen2", tmp_path / "sharded", max_shard_size="500KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 1
    assert load_model(sharded, device="cpu").fingerprint == single.fingerprint


def test_dtype_is_a_choice(tiny_checkpoint: Callable[..., Path]) -> None:
    lm = load_model(tiny_checkpoint("gpt_neox"), device="cpu", dtype="bfloat16")
    assert lm.dtype == torch.bfloat16 and lm.info()["dtype"] == "bfloat16"
    assert lm.spec.weight(lm.model, 0).dtype == torch.bfloat16
