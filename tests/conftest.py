"""Shared fixtures: the real demo model, tiny random checkpoints of every family, an isolated cache.

* ``demo`` (session): SmolLM2-135M-Instruct as a :class:`~auditor.model.checkpoint.LoadedModel` on CPU in
  float32, converted once into the normal user cache (so the ~40 s GGUF import happens once per
  machine, not once per test run).
* ``tokenizer_dir`` (session): the demo's tokenizer saved to a temporary folder; tiny models use it,
  so nothing is fetched from the Hugging Face hub.
* ``tiny_checkpoint`` (factory): ``tiny_checkpoint("gpt2", folder)`` saves a small randomly
  initialised model of that ``model_type`` with safetensors and the tokenizer, returns the folder.
* ``isolated_cache``: ``EDIT_AUDITOR_CACHE`` pointed at an empty temporary folder for one test.

The report header names the versions of the libraries the results depend on.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

TINY_HIDDEN = 32  # hidden size of tiny models
TINY_INTER = 48  # MLP width (the key dimension); differs from TINY_HIDDEN so orientation is visible
TINY_LAYERS = 2


def pytest_report_header(config: pytest.Config) -> list[str]:
    import safetensors
    import transformers

    return [
        f"edit-auditor: python {sys.version.split()[0]}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, safetensors {safetensors.__version__}, "
        f"sqlite {sqlite3.sqlite_version}, cuda {torch.cuda.is_available()}",
    ]


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    """The demo model's safetensors folder in the user cache (converted on first use)."""
    from auditor.model.checkpoint import demo_folder

    return demo_folder()


@pytest.fixture(scope="session")
def demo(demo_dir: Path) -> Any:
    """The demo model loaded on CPU in float32 (shared by the whole session: do not edit it).
    ``EDIT_AUDITOR_TEST_DEVICE=cuda`` loads it on the GPU instead (bench/gpu_check.sh)."""
    import os

    from auditor.model.checkpoint import load_model

    return load_model(demo_dir, device=os.environ.get("EDIT_AUDITOR_TEST_DEVICE", "cpu"), dtype="float32")


@pytest.fixture(scope="session")
def tokenizer_dir(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    AutoTokenizer.from_pretrained(demo_dir).save_pretrained(out)
    return out


@pytest.fixture
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("EDIT_AUDITOR_CACHE", str(cache))
    return cache


def tiny_config_kwargs(model_type: str, vocab_size: int) -> dict[str, Any]:
    """Small config arguments for each supported ``model_type``."""
    llama_like = dict(hidden_size=TINY_HIDDEN, intermediate_size=TINY_INTER, num_hidden_layers=TINY_LAYERS,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    gpt_like = dict(n_embd=TINY_HIDDEN, n_inner=TINY_INTER, n_layer=TINY_LAYERS, n_head=4, n_positions=128)
    table: dict[str, dict[str, Any]] = {
        "llama": llama_like,
        "mistral": llama_like,
        "qwen2": llama_like,
        "gpt2": gpt_like,
        "gptj": {**gpt_like, "rotary_dim": 4},
        "gpt_neox": dict(hidden_size=TINY_HIDDEN, intermediate_size=TINY_INTER, num_hidden_layers=TINY_LAYERS,
                         num_attention_heads=4, max_position_embeddings=128, rotary_pct=0.5),
    }
    return {**table[model_type], "vocab_size": vocab_size}


def save_tiny(model_type: str, folder: Path, tokenizer_dir: Path, seed: int = 0, **save_kwargs: Any) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = AutoConfig.for_model(model_type, **tiny_config_kwargs(model_type, len(tokenizer)))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, **save_kwargs)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_checkpoint(tokenizer_dir: Path, tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``tiny_checkpoint(model_type, folder=None, **save_pretrained_kwargs) -> folder``."""

    def make(model_type: str = "llama", folder: Path | None = None, **save_kwargs: Any) -> Path:
        return save_tiny(model_type, folder or tmp_path / f"tiny-{model_type}", tokenizer_dir, **save_kwargs)

    return make
