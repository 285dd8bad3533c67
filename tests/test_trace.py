"""Causal tracing (auditor/measure/trace.py) on the demo model and on tiny models of every family.

One module-scoped trace of the demo model (all three kinds, few noise draws) is shared by the
asserts; the restorations that must give back the clean probability go through the same batched
path as the heatmaps.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from auditor.measure.trace import KINDS, TraceCancelled, TraceError, Tracer, default_window, window_layers
from auditor.model.checkpoint import load_model

PROMPT = "The capital of France is"
SUBJECT = "France"
SAMPLES = 3


@pytest.fixture(scope="module")
def tracer(demo: Any) -> Tracer:
    return Tracer(demo, samples=SAMPLES)


@pytest.fixture(scope="module")
def prep(tracer: Tracer) -> Any:
    return tracer.prepare(PROMPT, SUBJECT)


@pytest.fixture(scope="module")
def traces(tracer: Tracer, prep: Any) -> dict:
    return tracer.trace(PROMPT, SUBJECT, prep=prep)


def test_clean_run_is_the_models_own_prediction(demo: Any, prep: Any) -> None:
    ids = demo.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        probs = torch.softmax(demo.model(input_ids=ids).logits[0, -1].float(), -1)
    assert prep.answer_id == int(probs.argmax())
    assert prep.answer.strip() == "Paris"
    assert prep.clean_prob == pytest.approx(float(probs[prep.answer_id]), abs=1e-5)
    assert prep.tokens[prep.subject_span[0]].strip() == "France"
    assert prep.subject_span[1] - prep.subject_span[0] == 1


def test_corruption_lowers_the_answer_probability(prep: Any) -> None:
    assert prep.corrupted_prob < 0.5 * prep.clean_prob


def test_restoring_everything_gives_back_the_clean_probability(tracer: Tracer, prep: Any) -> None:
    L, T = tracer.lm.n_layers, len(prep.tokens)
    every_hidden = [("hidden", layer, t) for layer in range(L) for t in range(T)]
    layer0_all_tokens = [("hidden", 0, t) for t in range(T)]
    subject_at_layer0 = [("hidden", 0, t) for t in range(*prep.subject_span)] + [
        ("hidden", 0, t) for t in range(prep.subject_span[1], T)]
    nothing: list = []
    probs = tracer.restore(prep, [every_hidden, layer0_all_tokens, subject_at_layer0, nothing])
    np.testing.assert_allclose(probs[:3], prep.clean_prob, atol=1e-4)
    assert probs[3] == pytest.approx(prep.corrupted_prob, abs=1e-5)


def test_heatmaps_have_the_right_shape_and_are_finite(tracer: Tracer, prep: Any, traces: dict) -> None:
    assert set(traces) == set(KINDS)
    for kind, tr in traces.items():
        assert tr.effects.shape == (len(prep.tokens), tracer.lm.n_layers)
        assert np.isfinite(tr.effects).all()
        assert ((tr.effects >= 0) & (tr.effects <= 1)).all()
        assert tr.window == (1 if kind == "hidden" else default_window(30)) and tr.samples == SAMPLES
        # tokens before the subject are never corrupted: restoring them changes nothing
        np.testing.assert_allclose(tr.effects[: prep.subject_span[0]], prep.corrupted_prob)
        assert tr.to_dict()["effects"][0][0] == pytest.approx(prep.corrupted_prob)
    hidden = traces["hidden"]
    # the residual stream at the last token of the last layer is everything the head sees
    assert hidden.effects[-1, -1] == pytest.approx(prep.clean_prob, abs=1e-4)
    # somewhere at the subject the restoration brings most of the probability back
    assert hidden.effects[hidden.subject_last].max() > 0.5 * prep.clean_prob


def test_skipping_blocks_and_positions_is_exact(demo: Any, tracer: Tracer, prep: Any) -> None:
    T = len(prep.tokens)
    rows = [tracer.states(k, layer, t) for k in KINDS for layer in (0, 5, 29) for t in range(prep.subject_span[0], T)]
    fast = tracer.restore(prep, rows)
    # every block at every position; one pass per row is checked on the tiny models below
    slow = Tracer(demo, samples=SAMPLES, noise=tracer.noise_level, skip_blocks=False, skip_tokens=False)
    np.testing.assert_allclose(fast, slow.restore(prep, rows), atol=2e-5)


def test_bfloat16_products_stay_close_to_float32(demo: Any, tracer: Tracer, prep: Any, traces: dict) -> None:
    """``precision="bfloat16"``: the same heatmaps to about 0.02 of probability, the same best layer
    at the subject's last token; the float32 model itself is untouched."""
    weight = demo.model.get_output_embeddings().weight
    fast = Tracer(demo, samples=SAMPLES, noise=tracer.noise_level, precision="bfloat16")
    halves = fast.trace(PROMPT, SUBJECT, prep=prep)
    assert weight.dtype == torch.float32 and demo.dtype == torch.float32
    for kind in KINDS:
        a, b = traces[kind].effects, halves[kind].effects
        assert halves[kind].precision == "bfloat16" and traces[kind].precision == "float32"
        assert not np.array_equal(a, b)  # the products did run in bfloat16
        np.testing.assert_allclose(b, a, atol=0.02)
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999
    last = prep.subject_span[1] - 1
    mlp_a, mlp_b = traces["mlp"].effects[last], halves["mlp"].effects[last]
    assert mlp_b[int(np.argmax(mlp_a))] >= mlp_b.max() - 0.02  # the peak stays the peak, within the error
    with pytest.raises(TraceError, match="precision"):
        Tracer(demo, precision="int8")


def test_windows_follow_the_paper_and_clip_at_the_ends() -> None:
    assert default_window(48) == 10 and default_window(30) == 6
    assert list(window_layers(10, 10, 48)) == list(range(5, 15))
    assert list(window_layers(0, 6, 30)) == [0, 1, 2]
    assert list(window_layers(29, 6, 30)) == [26, 27, 28, 29]


def test_cancel_and_progress(tracer: Tracer, prep: Any) -> None:
    seen: list = []
    cancel = threading.Event()

    def on_progress(p: Any) -> None:
        seen.append((p.phase, p.step, p.total))
        cancel.set()

    small = Tracer(tracer.lm, samples=SAMPLES, noise=tracer.noise_level, batch_tokens=SAMPLES * len(prep.tokens))
    with pytest.raises(TraceCancelled):
        small.trace(PROMPT, SUBJECT, kinds=("hidden",), prep=prep, progress=on_progress, cancel=cancel)
    assert seen and seen[0][0] == "trace" and seen[0][1] < seen[0][2]


@pytest.mark.parametrize("prompt,subject,message", [
    ("The capital of France is", "Germany", "does not occur"),
    ("The capital of France is", "  ", "empty"),
])
def test_bad_input_is_refused(tracer: Tracer, prompt: str, subject: str, message: str) -> None:
    with pytest.raises(TraceError, match=message):
        tracer.prepare(prompt, subject)


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gptj", "gpt_neox"])
def test_every_family_traces_exactly(tiny_checkpoint: Callable[..., Path], model_type: str) -> None:
    lm = load_model(tiny_checkpoint(model_type), device="cpu")
    tracer = Tracer(lm, samples=2, noise=0.5)
    prep = tracer.prepare("The capital of {} is", "France", answer="Paris")
    T, L = len(prep.tokens), lm.n_layers
    every = [(k, layer, t) for k in KINDS for layer in range(L) for t in range(T)]
    rows = [tracer.states(k, layer, t) for k in KINDS for layer in range(L) for t in range(T)]
    fast = tracer.restore(prep, rows + [every])
    slow = Tracer(lm, samples=2, noise=0.5, batch_tokens=1, skip_blocks=False, skip_tokens=False).restore(prep, rows)
    np.testing.assert_allclose(fast[:-1], slow, atol=1e-6)
    assert fast[-1] == pytest.approx(prep.clean_prob, abs=1e-6)
    assert prep.corrupted_prob != pytest.approx(prep.clean_prob, rel=1e-3)


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gptj", "gpt_neox"])
def test_a_model_loaded_in_bfloat16_traces_like_its_float32_self(tiny_checkpoint: Callable[..., Path],
                                                                 model_type: str) -> None:
    """Large models are loaded in bfloat16: their trace runs (the restored passes' final hidden
    states once reached a bfloat16 head as float32: a dtype error, found by bench/gpu_check.sh's
    CPU check) and follows the float32 trace of the same weights to bfloat16's precision."""
    folder = tiny_checkpoint(model_type)
    out = {}
    for dtype in ("float32", "bfloat16"):
        lm = load_model(folder, device="cpu", dtype=dtype)
        tracer = Tracer(lm, samples=2, noise=0.5)
        traced = tracer.trace("The capital of {} is", "France", answer="Paris")
        out[dtype] = np.stack([traced[k].effects for k in KINDS])
        assert all(traced[k].precision == dtype for k in KINDS)  # the products in the model's own dtype
    assert np.isfinite(out["bfloat16"]).all()
    np.testing.assert_allclose(out["bfloat16"], out["float32"], atol=0.02)
    assert np.corrcoef(out["bfloat16"].ravel(), out["float32"].ravel())[0, 1] > 0.9


def test_noise_is_three_sigma_of_the_subjects_embeddings_as_the_reference(demo: Any, traces: dict) -> None:
    """kmeng01/rome ``collect_embedding_std``: the std of the subjects' token embeddings, times 3;
    the older choice (a sample of the reference text) stays available as ``noise_source="corpus"``."""
    import json

    from auditor.measure.trace import SUBJECT_FILES, embedding_std
    from auditor.model.resources import resource_path

    subjects = {r["subject"] for name in SUBJECT_FILES for r in json.loads(resource_path(name).read_text())}
    ids = [i for s in sorted(subjects) for i in demo.tokenizer(s, add_special_tokens=False)["input_ids"]]
    table = demo.model.get_input_embeddings().weight.detach()
    expected = 3 * float(table[torch.tensor(ids)].float().std())
    assert Tracer(demo).noise_level == pytest.approx(expected, rel=1e-5)
    assert all(t.noise == pytest.approx(expected, rel=1e-5) and t.noise_source == "subjects" for t in traces.values())
    corpus = Tracer(demo, noise_source="corpus")
    assert corpus.noise_level == pytest.approx(3 * embedding_std(demo)) and corpus.noise_level != pytest.approx(expected)
    with pytest.raises(TraceError, match="unknown noise source"):
        Tracer(demo, noise_source="text")
