"""Issue 11, items 3-5: the validation paths accept every real input we ship or support, and the
command line's flags and ``--hparams`` share one path with the engine (and the window).

The hostile side of each check is in test_hostile_inputs.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from auditor.cli import build_parser, fail
from auditor.cli.edit import _hparam_overrides
from auditor.engine.hparams import RESOURCES, HParamsError, load_hparams
from auditor.model.checkpoint import _check_gguf, demo_gguf
from auditor.model.config_check import check_config, read_config
from auditor.model.requests import load_requests


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gptj", "gpt_neox", "qwen2"])
def test_real_configs_of_every_family_pass(model_type: str, tiny_checkpoint) -> None:
    folder = tiny_checkpoint(model_type)
    weights = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    sizes = check_config(read_config(folder / "config.json"), weight_bytes=weights)
    assert sizes["layers"] == 2 and sizes["hidden"] == 32


def test_the_demo_config_and_gguf_pass(demo_dir: Path) -> None:
    weights = sum(f.stat().st_size for f in demo_dir.glob("*.safetensors"))
    assert check_config(read_config(demo_dir / "config.json"), weight_bytes=weights)["layers"] == 30
    _check_gguf(demo_gguf())  # raises on a false positive


def test_every_shipped_hparams_file_and_request_file_passes() -> None:
    from auditor.model.architectures import REGISTRY

    for family in sorted({spec.family for spec in REGISTRY}):  # the ROME files (other methods have their own)
        assert load_hparams(family).layer >= 0
    for path in sorted((RESOURCES / "demo").glob("*.json")):
        assert load_requests(path)


def overrides(*argv: str) -> dict:
    return _hparam_overrides(build_parser().parse_args(["edit", "demo", "--requests", "r.json", *argv]))


@pytest.mark.parametrize("flag, hparams, message", [
    (["--steps", "-3"], {"v_num_grad_steps": -3}, "v_num_grad_steps = -3 is outside [1, 10000]"),
    (["--layer", "-1"], {"layer": -1}, "layer = -1 is outside [0, 4095]"),
    (["--stats-tokens", "0"], {"mom2_n_tokens": 0}, "mom2_n_tokens = 0 is outside [1, 100000000]"),
])
def test_flags_and_hparams_fail_alike_and_like_the_engine(flag, hparams, message) -> None:
    errors = []
    for argv in (flag, ["--hparams", json.dumps(hparams)]):
        with pytest.raises(type(fail(""))) as e:
            overrides(*argv)
        errors.append(str(e.value))
    assert errors[0] == errors[1] == f"hyper-parameters: {message}"
    with pytest.raises(HParamsError, match=message.replace("[", r"\[")):
        load_hparams("llama", hparams)  # what Editor.edit (and so the window) calls


def test_flags_win_over_hparams_and_values_are_kept() -> None:
    got = overrides("--hparams", '{"v_num_grad_steps": 5, "v_lr": 1}', "--steps", "7")
    assert got == {"v_num_grad_steps": 7, "v_lr": 1.0}
