"""Where the editable matrix lives in each supported model family.

ROME edits one MLP down-projection per fact. Its input at the subject's last
token is the *key* k, its output the *value* v. Families differ in the module
path and in how the weight is stored:

* ``nn.Linear`` keeps ``weight`` as ``[out_features, in_features]`` and
  computes ``y = x @ W.T``;
* GPT-2's ``Conv1D`` keeps ``weight`` as ``[in_features, out_features]`` and
  computes ``y = x @ W``.

Adding a family means adding one :class:`ArchSpec` to :data:`REGISTRY`; the
test-suite builds a tiny random model of every entry and checks, with a forward
hook, that the named module really receives the keys and that the orientation
is right.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from auditor.base import AuditorError


class UnsupportedArchitecture(AuditorError, ValueError):
    """The checkpoint's ``model_type`` has no entry in :data:`REGISTRY`."""


@dataclass(frozen=True)
class ArchSpec:
    family: str  # the name used for default hyper-parameters (resources/hparams/<family>.json)
    model_types: tuple[str, ...]  # config.model_type values served by this entry
    down_proj: str  # module path template, "{}" = layer index; its input is the key
    transposed: bool  # True: weight is [in, out] (GPT-2 Conv1D); False: [out, in] (nn.Linear)
    layers: str  # module path of the list of decoder blocks
    n_layers_attr: str  # config attribute holding the layer count

    def down_proj_name(self, layer: int) -> str:
        return self.down_proj.format(layer)

    def weight_name(self, layer: int) -> str:
        """Parameter name of the edited matrix in ``model.named_parameters()``."""
        return self.down_proj_name(layer) + ".weight"

    def n_layers(self, config: Any) -> int:
        return int(getattr(config, self.n_layers_attr))

    def module(self, model: torch.nn.Module, layer: int) -> torch.nn.Module:
        return model.get_submodule(self.down_proj_name(layer))

    def weight(self, model: torch.nn.Module, layer: int) -> torch.nn.Parameter:
        return self.module(model, layer).weight

    def key_dim(self, model: torch.nn.Module, layer: int) -> int:
        w = self.weight(model, layer)
        return w.shape[0] if self.transposed else w.shape[1]

    def value_dim(self, model: torch.nn.Module, layer: int) -> int:
        w = self.weight(model, layer)
        return w.shape[1] if self.transposed else w.shape[0]

    def as_out_in(self, w: torch.Tensor) -> torch.Tensor:
        """View of a weight in ``[out, in]`` orientation whatever the storage."""
        return w.T if self.transposed else w


_LLAMA = ArchSpec(
    family="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3", "smollm3"),
    down_proj="model.layers.{}.mlp.down_proj",
    transposed=False,
    layers="model.layers",
    n_layers_attr="num_hidden_layers",
)
_GPT2 = ArchSpec(
    family="gpt2",
    model_types=("gpt2",),
    down_proj="transformer.h.{}.mlp.c_proj",
    transposed=True,
    layers="transformer.h",
    n_layers_attr="n_layer",
)
_GPTJ = ArchSpec(
    family="gptj",
    model_types=("gptj",),
    down_proj="transformer.h.{}.mlp.fc_out",
    transposed=False,
    layers="transformer.h",
    n_layers_attr="n_layer",
)
_NEOX = ArchSpec(
    family="gpt_neox",
    model_types=("gpt_neox",),
    down_proj="gpt_neox.layers.{}.mlp.dense_4h_to_h",
    transposed=False,
    layers="gpt_neox.layers",
    n_layers_attr="num_hidden_layers",
)

REGISTRY: tuple[ArchSpec, ...] = (_LLAMA, _GPT2, _GPTJ, _NEOX)


def supported_model_types() -> list[str]:
    return sorted(t for spec in REGISTRY for t in spec.model_types)


def spec_for(config_or_model_type: Any) -> ArchSpec:
    """The entry for a ``transformers`` config (or a ``model_type`` string)."""
    model_type = (
        config_or_model_type
        if isinstance(config_or_model_type, str)
        else getattr(config_or_model_type, "model_type", None)
    )
    for spec in REGISTRY:
        if model_type in spec.model_types:
            return spec
    raise UnsupportedArchitecture(
        f"unsupported architecture {model_type!r}; supported model types: "
        f"{', '.join(supported_model_types())}. To add one, append an ArchSpec naming its "
        f"MLP down-projection to REGISTRY in auditor/architectures.py."
    )
