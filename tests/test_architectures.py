"""The registry points at the right matrix, in the right orientation, for every supported family.

A tiny random model of each family is saved with safetensors, loaded back through
``load_model`` (the product's only loading path), and its registry entry is checked by shapes
and by a forward hook on the named down-projection: its input has the key dimension, its output
the hidden size, and ``output == input @ as_out_in(W).T (+ bias)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch
from conftest import TINY_HIDDEN, TINY_INTER, TINY_LAYERS

from auditor.model.architectures import REGISTRY, UnsupportedArchitecture, spec_for, supported_model_types
from auditor.model.checkpoint import load_model

FAMILIES = ("llama", "mistral", "qwen2", "gpt2", "gptj", "gpt_neox")
EXPECTED_FAMILY = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "gpt2": "gpt2", "gptj": "gptj",
                   "gpt_neox": "gpt_neox"}


def hooked_io(module: torch.nn.Module, model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The input and output of ``module`` during one forward pass of ``model`` on ``ids``."""
    seen: dict[str, torch.Tensor] = {}

    def hook(_mod: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen["in"], seen["out"] = inputs[0].detach(), output.detach()

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        handle.remove()
    return seen["in"], seen["out"]


@pytest.mark.parametrize("model_type", FAMILIES)
def test_registry_entry_matches_the_real_module(model_type: str, tiny_checkpoint: Callable[..., Path]) -> None:
    lm = load_model(tiny_checkpoint(model_type), device="cpu")
    spec = lm.spec
    assert lm.config.model_type == model_type
    assert spec.family == EXPECTED_FAMILY[model_type]
    assert lm.n_layers == TINY_LAYERS == len(lm.model.get_submodule(spec.layers))
    assert spec.weight_name(1) in dict(lm.model.named_parameters())

    for layer in range(lm.n_layers):
        w = spec.weight(lm.model, layer)
        assert tuple(w.shape) == ((TINY_INTER, TINY_HIDDEN) if spec.transposed else (TINY_HIDDEN, TINY_INTER))
        assert (spec.key_dim(lm.model, layer), spec.value_dim(lm.model, layer)) == (TINY_INTER, TINY_HIDDEN)

        ids = lm.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
        module = spec.module(lm.model, layer)
        k, v = hooked_io(module, lm.model, ids)
        assert k.shape[-1] == TINY_INTER  # the module's input is the key
        assert v.shape[-1] == TINY_HIDDEN  # its output lives in the residual stream
        bias = getattr(module, "bias", None)
        expected = torch.nn.functional.linear(k, spec.as_out_in(w), bias)
        torch.testing.assert_close(v, expected, rtol=1e-5, atol=1e-5)


def test_a_wrong_orientation_would_be_caught(tiny_checkpoint: Callable[..., Path]) -> None:
    """The hook check above is able to fail: flipping ``transposed`` breaks the shapes."""
    lm = load_model(tiny_checkpoint("gpt2"), device="cpu")
    w = lm.spec.weight(lm.model, 0)
    assert lm.spec.as_out_in(w).shape != w.shape
    with pytest.raises(RuntimeError):
        k, _ = hooked_io(lm.spec.module(lm.model, 0), lm.model, torch.tensor([[1, 2, 3]]))
        torch.nn.functional.linear(k, w)  # [in, out] used as if it were [out, in]


def test_every_family_is_served_by_exactly_one_entry() -> None:
    for model_type in FAMILIES:
        assert sum(model_type in spec.model_types for spec in REGISTRY) == 1
    assert set(FAMILIES) <= set(supported_model_types())


def test_unknown_architecture_names_the_supported_ones_and_how_to_add() -> None:
    with pytest.raises(UnsupportedArchitecture) as err:
        spec_for("mamba")
    message = str(err.value)
    assert "'mamba'" in message and "gpt_neox" in message and "llama" in message
    assert "REGISTRY" in message and "\n" not in message
