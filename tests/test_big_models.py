"""Models larger than the memory they are given: the memory plan, accelerate's offload, editing
an offloaded model (issue 20).

Fast tests use tiny random checkpoints and the demo's config; the one slow test edits the demo
with a third of its weights' size allowed in memory, in a subprocess whose resident memory is
sampled from /proc.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from auditor.cli.parser import main
from auditor.engine.deltas import Delta, apply_delta
from auditor.model.checkpoint import MemoryRefused, load_model
from auditor.model.memory_plan import parse_max_memory, plan_memory
from auditor.model.offload import (
    OffloadFolderError,
    check_offload_folder,
    is_offloaded,
    read_param,
)
from auditor.model.requests import EditRequest

ROOT = Path(__file__).resolve().parents[1]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- the plan


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gpt_neox"])
def test_the_plan_counts_the_parameters_and_key_size_of_the_real_model(tiny_checkpoint, model_type: str) -> None:
    folder = tiny_checkpoint(model_type)
    lm = load_model(folder, device="cpu")
    for method in ("rome", "memit", "alphaedit"):
        plan = plan_memory(folder, method=method)
        d = lm.spec.key_dim(lm.model, 0)
        assert plan.parameters == lm.n_parameters()
        assert plan.weights == 4 * lm.n_parameters()
        assert plan.key_dim == d and plan.stats_held == 4 * d * d * len(plan.edited_layers)
        assert plan.peak == plan.weights + plan.working > plan.weights
    half = plan_memory(folder, dtype="bfloat16")
    assert half.weights * 2 == plan_memory(folder).weights


def test_the_demo_plan_matches_the_loaded_demo_and_orders_the_methods(demo, demo_dir: Path) -> None:
    plans = {m: plan_memory(demo_dir, method=m) for m in ("rome", "memit", "alphaedit")}
    assert plans["rome"].parameters == demo.n_parameters() == 134_515_008
    assert plans["memit"].edited_layers == [3, 4, 5, 6] and plans["rome"].edited_layers == [4]
    # the float64 solves grow rome < memit < alphaedit (2, 4, 6 d_ff x d_ff matrices)
    assert plans["rome"].solve < plans["memit"].solve < plans["alphaedit"].solve


def test_the_plan_sizes_the_passes_the_engine_runs() -> None:
    """The plan's batch sizes are the engine's (the plan may not import the engine: layers)."""
    from auditor.engine.methods import V_BATCH
    from auditor.engine.stats import HELD_OUT_TOKENS
    from auditor.measure import perplexity
    from auditor.measure.collateral import SCORE_BATCH
    from auditor.model import memory_plan

    assert memory_plan.V_BATCH == V_BATCH and memory_plan.SCORE_BATCH == SCORE_BATCH
    assert memory_plan.HELD_OUT_TOKENS == HELD_OUT_TOKENS
    assert (memory_plan.PPL_TOKENS, memory_plan.PPL_BATCH, memory_plan.PPL_SEQ_LEN, memory_plan.HEAD_CHUNK_ELEMENTS) == (
        perplexity.DEFAULT_TOKENS, perplexity.DEFAULT_BATCH, perplexity.DEFAULT_SEQ_LEN, perplexity.HEAD_CHUNK_ELEMENTS)


def peak_above_start(fn, device: torch.device) -> tuple[object, int]:
    """``fn()`` and the most memory it held at once above what was in use when it began: on a GPU
    PyTorch's own count, on the CPU glibc's bytes in use (``live_bytes``) sampled every 0.5 ms
    (a missed sample can only make the figure smaller)."""
    import threading
    import time

    from auditor.model.offload import give_freed_buffers_back, live_bytes

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        return out, torch.cuda.max_memory_allocated(device) - start
    give_freed_buffers_back()
    start = live_bytes()
    if not start:
        pytest.skip("no glibc mallinfo2 to read live memory from")
    peak, done = [start], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], live_bytes())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out = fn()
    finally:
        done.set()
        sampler.join()
    return out, max(peak[0], live_bytes()) - start


def test_the_plan_sizes_the_v_star_pass_and_the_audit_as_they_run(demo) -> None:
    """The plan's v* / z* term (MEMIT's batch of 10 at its last layer) and its audit term
    (collateral.preservation_cost of the edited layer) against the memory those passes hold on
    the demo: the plan may be off by no more than 15% either way (the issue's bound: under, it lets
    in a model that does not fit; over, it refuses one that fits). Session 10 measured the v* term
    at 0.96-1.05 of the pass on the 135M and 360M shapes in both dtypes (0.91 here: real weights,
    other requests); session 9's term (7 hidden + 4 d_ff wide per column) was 1.29-1.34 of it
    there and 1.18 here, and fails this test."""
    from auditor.engine import rome
    from auditor.measure.collateral import preservation_cost
    from auditor.model.memory_plan import plan_config
    from auditor.model.requests import load_requests
    from auditor.run.edit import Editor

    templates = ["{}", "The following is a fact. {}"]  # 3 v* prompts a request with the KL prompt
    requests = load_requests(ROOT / "tests" / "data" / "counterfact_100.json")[:10]
    dtype = str(demo.dtype).replace("torch.", "")
    plan = plan_config(demo.model.config, dtype=dtype, method="memit", requests=len(requests),
                       prompts=len(templates) + 1, prompt_tokens=12)
    hp = Editor(demo).hparams({"context_templates": templates, "v_num_grad_steps": 3})
    # each pass once before it is measured: the math libraries keep per-thread buffers from their
    # first call on, which the process holds from then on (in the product, from its first edit)
    rome.optimise_values(demo, requests[:2], max(plan.edited_layers), templates, replace(hp, v_num_grad_steps=1))
    values, v_peak = peak_above_start(
        lambda: rome.optimise_values(demo, requests, max(plan.edited_layers), templates, hp), demo.device)
    assert len(values) == len(requests) and all(torch.isfinite(v.v_star).all() for v in values)
    print(f"\nv* of {len(requests)}: measured {v_peak / 2**20:.1f} MiB, plan {plan.v_star / 2**20:.1f} MiB "
          f"({plan.v_star / v_peak:.2f})")
    assert plan.v_star / 1.15 <= v_peak <= plan.v_star / 0.85

    layer = max(plan.edited_layers)
    name = demo.spec.weight_name(layer)
    g = torch.Generator().manual_seed(0)
    part = Delta.factored(name, demo.spec.transposed, torch.randn(plan.value_dim, 1, generator=g, dtype=torch.float64),
                          torch.randn(plan.key_dim, 1, generator=g, dtype=torch.float64))
    root = torch.randn(plan.key_dim, plan.key_dim, generator=g) / plan.key_dim ** 0.5
    C = (root @ root.T).to(demo.device)
    preservation_cost(demo, part, C)
    # a pass of milliseconds: the sampler may miss its peak, so the most of five runs
    cost, a_peak = max((peak_above_start(lambda: preservation_cost(demo, part, C), demo.device) for _ in range(5)),
                       key=lambda r: r[1])
    assert cost > 0
    print(f"audit: measured {a_peak / 2**20:.1f} MiB, plan {plan.audit / 2**20:.1f} MiB ({plan.audit / a_peak:.2f})")
    assert plan.audit / 1.15 <= a_peak <= plan.audit / 0.85

    # the perplexity check (the head on a few positions at a time): within 15% of the plan's term
    from auditor.measure.perplexity import PerplexityProbe

    probe = PerplexityProbe(demo)
    probe.compute()
    _, p_peak = peak_above_start(probe.compute, demo.device)
    print(f"perplexity check: measured {p_peak / 2**20:.1f} MiB, plan {plan.perplexity / 2**20:.1f} MiB")
    assert plan.perplexity / 1.15 <= p_peak <= plan.perplexity / 0.85


@pytest.mark.parametrize("text,expected", [
    ("0=20GiB,cpu=8GiB", {0: 20 << 30, "cpu": 8 << 30}),
    ("cpu=512MB", {"cpu": 512_000_000}),
    ("cuda:1=1.5GiB", {1: int(1.5 * (1 << 30))}),
])
def test_max_memory_syntax(text: str, expected: dict) -> None:
    assert parse_max_memory(text) == expected


@pytest.mark.parametrize("bad", ["cpu", "gpu=3GiB", "cpu=lots", "cpu=0", "0=1GiB,0=2GiB", "=5GiB"])
def test_bad_max_memory_is_one_line_and_exit_2(bad: str, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["info", "demo", "--plan", "--max-memory", bad])
    assert e.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err[-1].startswith("edit-auditor: error:") and "--max-memory" in err[-1]


def test_info_plan_prints_the_plan_and_refuses_what_does_not_fit(demo_dir: Path, capsys) -> None:
    assert main(["info", "demo", "--plan", "--method", "memit", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["fits"] and plan["peak"] == plan["weights"] + plan["working"]
    assert main(["info", "demo", "--plan", "--max-memory", "cpu=100MiB"]) == 2
    out, err = capsys.readouterr()
    assert "does not fit" in out and "--offload-folder DIR" in out
    assert len(err.strip().splitlines()) == 1 and "will not fit" in err
    assert main(["info", "demo", "--plan", "--max-memory", "cpu=100MiB", "--offload-folder", "anywhere"]) == 0


def test_a_model_that_cannot_fit_is_refused_before_loading(tiny_checkpoint) -> None:
    folder = tiny_checkpoint("llama")
    with pytest.raises(MemoryRefused) as e:
        load_model(folder, device="cpu", max_memory={"cpu": 1 << 20})
    assert "no --offload-folder" in str(e.value) and "\n" not in str(e.value)
    assert any("--offload-folder" in o for o in e.value.options)
    assert e.value.plan.weights > 1 << 20


# ---------------------------------------------------------------- the offload folder


def test_the_offload_folder_never_overwrites_anything(tmp_path: Path, tiny_checkpoint) -> None:
    ckpt = tiny_checkpoint("llama")
    check_offload_folder(tmp_path / "new")  # absent: fine
    (tmp_path / "empty").mkdir()
    check_offload_folder(tmp_path / "empty")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "index.json").write_text("{}")
    (tmp_path / "old" / "w.dat").write_bytes(b"x")
    check_offload_folder(tmp_path / "old")  # an earlier offload folder is reused
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("precious")
    (tmp_path / "file").write_text("x")
    for bad in (tmp_path / "notes", tmp_path / "file", ckpt, ckpt / "offload", ckpt.parent):
        with pytest.raises(OffloadFolderError):
            check_offload_folder(bad, protected=[ckpt])
    assert (tmp_path / "notes" / "thesis.tex").read_text() == "precious"


# ---------------------------------------------------------------- offloaded models


def test_an_offloaded_tiny_model_has_the_in_memory_fingerprint_and_takes_the_same_delta(
        tiny_checkpoint, tmp_path: Path) -> None:
    folder = tiny_checkpoint("llama")
    before = {f.name: sha(f) for f in folder.glob("*.safetensors")}
    ref = load_model(folder, device="cpu")
    off = load_model(folder, device="cpu", max_memory={"cpu": 2 << 20}, offload_folder=tmp_path / "off")
    name = off.spec.weight_name(1)
    assert is_offloaded(off.model, name) and not is_offloaded(ref.model, name)
    assert off.fingerprint == ref.fingerprint
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    torch.testing.assert_close(off.model(input_ids=ids).logits, ref.model(input_ids=ids).logits)
    g = torch.Generator().manual_seed(0)
    W = ref.spec.weight(ref.model, 1)
    delta = Delta(param=name, transposed=False, left=torch.randn(W.shape[0], generator=g),
                  right=torch.randn(W.shape[1], generator=g))
    for lm in (ref, off):
        apply_delta(lm.model, delta)
    assert torch.equal(read_param(off.model, name), ref.spec.weight(ref.model, 1))
    from auditor.model.checkpoint import fingerprint_model

    assert fingerprint_model(off.model) == fingerprint_model(ref.model) != ref.fingerprint
    torch.testing.assert_close(off.model(input_ids=ids).logits, ref.model(input_ids=ids).logits)
    for lm in (ref, off):
        apply_delta(lm.model, delta, sign=-1)
    assert fingerprint_model(off.model) == fingerprint_model(ref.model)
    # the checkpoint the offload index pointed at was never written
    assert {f.name: sha(f) for f in folder.glob("*.safetensors")} == before


TINY_ROME_HP = {"layer": 1, "mom2_n_tokens": 2048, "mom2_seq_len": 64, "v_num_grad_steps": 4,
                "context_templates": ["{}"]}
FRANCE = EditRequest(prompt="The capital of {} is", subject="France", target_new="Rome", target_true="Paris")


def test_a_failed_or_dry_edit_of_an_offloaded_model_puts_the_offloaded_weights_back(
        tiny_checkpoint, isolated_cache: Path, tmp_path: Path) -> None:
    """edit, edit_many(independent) and a batch restore the weights in the offload store, not only
    those in memory: after a dry run (applied, measured, then undone) the fingerprint is the base's."""
    from auditor.model.checkpoint import fingerprint_model
    from auditor.run.batch import edit_batch
    from auditor.run.edit import Editor

    folder = tiny_checkpoint("llama")
    off = load_model(folder, device="cpu", max_memory={"cpu": 2 << 20}, offload_folder=tmp_path / "off")
    names = [off.spec.weight_name(i) for i in (0, 1)]
    assert all(is_offloaded(off.model, n) for n in names)
    base = {n: read_param(off.model, n).clone() for n in names}
    editor = Editor(off)
    res = editor.edit(FRANCE, hparams=TINY_ROME_HP, dry_run=True, measure_ppl=False, allow_collapse=True)
    assert res.status == "dry-run" and res.delta is not None and res.delta.dense().abs().max() > 0
    assert fingerprint_model(off.model) == off.fingerprint
    many = editor.edit_many([FRANCE, TWO[1]], independent=True, hparams=TINY_ROME_HP, measure_ppl=False,
                            allow_collapse=True)
    assert [r.status for r in many] == ["applied", "applied"]
    assert fingerprint_model(off.model) == off.fingerprint
    batch = edit_batch(editor, TWO, method="memit", hparams=TINY_BATCH_HP, measure_ppl=False, dry_run=True,
                       allow_collapse=True)
    assert batch.status == "dry-run", batch.error
    for n in names:
        assert torch.equal(read_param(off.model, n), base[n])
    assert fingerprint_model(off.model) == off.fingerprint


@pytest.fixture
def offloaded_pair(tiny_checkpoint, isolated_cache: Path, tmp_path: Path):
    """(an in-memory workspace, a workspace whose edited matrices are offloaded to disk) of the same
    tiny checkpoint, each with the same ROME edit applied."""
    from auditor.run.workspace import Workspace

    folder = tiny_checkpoint("llama")
    ref = Workspace.init(folder, tmp_path / "ref", device="cpu")
    off = Workspace.init(folder, tmp_path / "off", device="cpu",
                         memory={"max_memory": {"cpu": 2 << 20}, "offload_folder": tmp_path / "store"})
    assert is_offloaded(off.lm.model, off.lm.spec.weight_name(1))
    for ws in (ref, off):
        result, _ = ws.edit(FRANCE, hparams=TINY_ROME_HP, measure_ppl=False, allow_collapse=True)
        assert result.status == "applied"
    assert off.fingerprint == ref.fingerprint != ref.base_fingerprint
    yield ref, off
    ref.close()
    off.close()


def test_ask_about_the_base_of_an_offloaded_model_puts_the_edit_back(offloaded_pair) -> None:
    """``weights_at`` (ask's earlier state) rebuilds and restores the offloaded weights in their store."""
    from auditor.model.checkpoint import fingerprint_model
    from auditor.run.ask import ask, weights_at

    ref, off = offloaded_pair
    with weights_at(off, 0):
        assert fingerprint_model(off.lm.model) == off.base_fingerprint
    assert fingerprint_model(off.lm.model) == off.fingerprint
    a, b = ask(ref, "The capital of France is", max_new_tokens=3), ask(off, "The capital of France is", max_new_tokens=3)
    assert (a.base, a.current) == (b.base, b.current)
    assert fingerprint_model(off.lm.model) == off.fingerprint


def test_the_monitor_of_an_offloaded_model_reads_its_matrices_and_base_perplexity(offloaded_pair) -> None:
    """The monitor's matrix figures and base perplexity read offloaded weights from their store
    (a meta tensor has no norm) and put the edit back afterwards."""
    from auditor.model.checkpoint import fingerprint_model
    from auditor.run.monitor import base_perplexity, matrix_figures

    ref, off = offloaded_pair
    assert base_perplexity(off) == pytest.approx(base_perplexity(ref), rel=1e-5)
    assert base_perplexity(off) != pytest.approx(off.editor.perplexity(), rel=1e-5)  # the edit changes it
    assert fingerprint_model(off.lm.model) == off.fingerprint
    name = off.lm.spec.weight_name(1)
    assert matrix_figures(read_param(off.lm.model, name)) == matrix_figures(read_param(ref.lm.model, name))
    figures = {}
    for ws in (ref, off):
        from auditor.run.monitor import Monitor

        figures[ws] = Monitor().measure(ws)["matrices"][name]
    assert figures[off] == pytest.approx(figures[ref], rel=1e-5)
    assert fingerprint_model(off.lm.model) == off.fingerprint


def test_a_patch_on_an_offloaded_model_applies_or_leaves_its_store_as_it_was(
        offloaded_pair, tiny_checkpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``apply-patch`` snapshots and restores offloaded weights in their store: a patch whose entry
    cannot be written (a full disk) leaves the offloaded model as it was; applied, it gives the
    source's fingerprint."""
    from auditor.model.checkpoint import fingerprint_model
    from auditor.run.patch import apply_patch_to_workspace
    from auditor.run.workspace import Workspace

    ref, _ = offloaded_pair
    patch = ref.export(tmp_path / "edit.patch", patch=True)
    ws = Workspace.init(tiny_checkpoint("llama"), tmp_path / "target", device="cpu",
                        memory={"max_memory": {"cpu": 2 << 20}, "offload_folder": tmp_path / "store2"})
    try:
        def full_disk(*_args, **_kwargs):
            raise OSError(28, "No space left on device")

        with monkeypatch.context() as m:
            m.setattr(ws.ledger, "append", full_disk)
            with pytest.raises(OSError):
                apply_patch_to_workspace(ws, patch)
        assert fingerprint_model(ws.lm.model) == ws.base_fingerprint
        entry = apply_patch_to_workspace(ws, patch)
        assert entry["fingerprint_after"] == ref.fingerprint == fingerprint_model(ws.lm.model)
    finally:
        ws.close()


def test_gradients_through_an_offloaded_model_are_the_in_memory_ones(tiny_checkpoint, tmp_path: Path) -> None:
    """``weights_not_saved`` hands autograd the store key of an offloaded weight, or of a view of
    it (matched by storage: ``matmul`` saves the transpose), and rebuilds the view in backward: the
    gradient is the in-memory model's."""
    from auditor.model.offload import weights_not_saved

    folder = tiny_checkpoint("llama")
    ref = load_model(folder, device="cpu")
    off = load_model(folder, device="cpu", max_memory={"cpu": 2 << 20}, offload_folder=tmp_path / "off")
    grads = []
    for lm in (ref, off):
        emb = lm.model.get_input_embeddings()(torch.tensor([[1, 2, 3, 4]])).detach().requires_grad_(True)
        with torch.enable_grad(), weights_not_saved(lm.model):
            (lm.model(inputs_embeds=emb).logits ** 2).sum().backward()
        grads.append(emb.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-6)


# ---------------------------------------------------------------- the demo, a third of it in memory

SCRIPT = textwrap.dedent("""
    import json, sys, threading, time
    peak = {"anon": 0}
    phase = ["start"]
    phases = {}  # the peak of each phase
    def anon():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    def poll():
        while True:
            now = anon()
            peak["anon"] = max(peak["anon"], now)
            phases[phase[0]] = max(phases.get(phase[0], 0), now)
            time.sleep(0.02)
    from auditor.model.requests import EditRequest
    from auditor.run.workspace import Workspace
    import transformers, accelerate  # noqa: F401 (the baseline imports the same)
    from transformers.models.llama import modeling_llama  # noqa: F401 (the model's code, imported by a load)
    tokenizer = transformers.AutoTokenizer.from_pretrained(sys.argv[2])  # what a load holds besides weights
    base = anon()
    threading.Thread(target=poll, daemon=True).start()
    if sys.argv[1] == "baseline":
        time.sleep(0.2)
        print(json.dumps({"base": base, "peak": peak["anon"]}))
        sys.exit(0)
    demo, ws_dir, off, export_dir, hp, req = sys.argv[2:8]
    memory = {"max_memory": {"cpu": int(sys.argv[1])}, "offload_folder": off}
    phase[0] = "init"
    ws = Workspace.init(demo, ws_dir, device="cpu", dtype="bfloat16", memory=memory)
    phase[0] = "edit"
    result, entry = ws.edit(EditRequest(**json.loads(req)), hparams=json.loads(hp), measure_ppl=False)
    phase[0] = "replay"
    replay = ws.replay()
    phase[0] = "export"
    ws.export(export_dir)
    time.sleep(0.05)
    print(json.dumps({"base": base, "peak": peak["anon"], "status": result.status, "phases": phases,
                      "delta": entry.delta_hash, "replay": replay["match"], "fingerprint": ws.fingerprint}))
""")

HPARAMS = {"context_templates": ["{}", "The following is a fact. {}"], "mom2_n_tokens": 2048, "v_num_grad_steps": 8}
REQUEST = {"prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
           "target_new": "English", "target_true": "French"}


def run_script(*argv: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *argv], capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_an_edit_of_the_demo_with_a_third_of_its_weights_in_memory(demo_dir: Path, tmp_path: Path) -> None:
    """bfloat16 demo, ``max_memory`` = weights / 3, the rest offloaded to disk: the delta is the
    in-memory one, the ledger replays bit for bit, the export holds the edit; the anonymous
    resident memory above the interpreter's own, sampled every 20 ms over the whole script, stays
    under the budget + the plan's working memory + one block + the embedding.

    bfloat16 because a float32 checkpoint loaded in float32 is memory-mapped (file pages, not
    anonymous memory: 158 MiB anon + 533 MiB file for the demo), while a cast load is anonymous
    (+269 MiB anon for the bfloat16 demo): in bfloat16 RssAnon counts the weights held.
    """
    from safetensors import safe_open

    from auditor.model.memory_plan import plan_memory
    from auditor.run.edit import Editor
    from auditor.run.workspace import open_ledger

    plan = plan_memory(demo_dir, dtype="bfloat16")
    budget = plan.weights // 3
    out = run_script(str(budget), str(demo_dir), str(tmp_path / "ws"), str(tmp_path / "off"),
                     str(tmp_path / "export"), json.dumps(HPARAMS), json.dumps(REQUEST))
    baseline = run_script("baseline", str(demo_dir))
    ref_lm = load_model(demo_dir, device="cpu", dtype="bfloat16")
    ref = Editor(ref_lm).edit(EditRequest(**REQUEST), hparams=HPARAMS, measure_ppl=False, dry_run=True)
    assert out["status"] == "applied" and out["replay"]
    delta = open_ledger(tmp_path / "ws").load_delta(out["delta"])
    torch.testing.assert_close(delta.dense(), ref.delta.dense(), rtol=0, atol=1e-6)
    name = ref_lm.spec.weight_name(4)
    apply_delta(ref_lm.model, ref.delta)
    exported = next(p for p in (tmp_path / "export").glob("*.safetensors"))
    with safe_open(str(exported), framework="pt") as f:
        assert torch.equal(f.get_tensor(name), ref_lm.spec.weight(ref_lm.model, 4))
    used = out["peak"] - baseline["base"]
    phases = {k: v - baseline["base"] for k, v in out["phases"].items()}
    embedding = plan.vocab * plan.hidden * 2  # bfloat16; tied with the head, kept in memory by accelerate
    bound = budget + plan.working + plan.largest_block + embedding
    # the replay loads a second, wholly offloaded model beside the first: its embedding and one block
    replay_bound = bound + embedding + plan.largest_block
    print(f"\noffloaded bfloat16 demo edit: weights {plan.weights >> 20} MiB, budget {budget >> 20} MiB, "
          f"anonymous memory above the interpreter {used >> 20} MiB (interpreter {baseline['base'] >> 20} MiB); "
          f"bound {bound >> 20} MiB = budget + plan working {plan.working >> 20} + one block "
          f"{plan.largest_block >> 20} + embedding {embedding >> 20}, in the replay {replay_bound >> 20} MiB; by phase "
          + ", ".join(f"{k} {v >> 20}" for k, v in phases.items()))
    # The margin over the budget is the plan's working memory, one materialised block and the
    # embedding (316 MiB in all). The baseline is an interpreter that has imported the model's code
    # and loaded its tokenizer (what any load holds besides weights: 300 MiB). Measured in session 7
    # (load 10): 191 MiB, by phase init 104, edit 145, replay 191 (a second, wholly offloaded
    # model beside the first), export 105. Before the fixes of session 7: 494-516 MiB. Session 9: the
    # plan's working memory is now the live estimate (91 MiB, was 110), and the replay's second
    # model, which this bound never counted, showed: init 90, edit 187, replay 241, export 121 against
    # one bound of 237. Each phase now has its own: the replay's adds the second model's embedding
    # and block (297 MiB); the whole bfloat16 model held in memory would need 256 + 91.
    assert max(v for k, v in phases.items() if k != "replay") <= bound, (phases, bound >> 20)
    assert phases["replay"] <= replay_bound and used <= replay_bound, (phases, replay_bound >> 20)


# ---------------------------------------------------------------- bfloat16 end to end

TINY_BATCH_HP = {"layers": [0, 1], "mom2_n_tokens": 2048, "mom2_seq_len": 64, "v_num_grad_steps": 5,
                 "context_n": 2, "context_len": 4}
TWO = [EditRequest(prompt="The capital of {} is", subject="France", target_new="Rome", target_true="Paris"),
       EditRequest(prompt="{} plays the", subject="Miles Davis", target_new="piano", target_true="trumpet")]


@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_memit_and_alphaedit_on_a_bfloat16_model_solve_in_float64_and_round_once(
        tiny_checkpoint, isolated_cache: Path, method: str) -> None:
    from auditor.run.batch import edit_batch
    from auditor.run.edit import Editor

    lm = load_model(tiny_checkpoint("llama"), device="cpu", dtype="bfloat16")
    names = [lm.spec.weight_name(i) for i in (0, 1)]
    before = {n: lm.model.get_parameter(n).detach().clone() for n in names}
    res = edit_batch(Editor(lm), TWO, method=method, hparams=TINY_BATCH_HP, measure_ppl=False,
                     allow_collapse=True)
    assert res.status == "applied", res.error
    for n in names:
        part = res.delta.part(n)
        assert part.left.dtype == part.right.dtype == torch.float64  # the solve's precision, kept
        after = lm.model.get_parameter(n).detach()
        assert after.dtype == torch.bfloat16
        assert torch.equal(after, (before[n].double() + part.dense()).to(torch.bfloat16))  # rounded once


def test_an_editor_keeps_the_held_out_keys_of_one_weight_state(tiny_checkpoint, isolated_cache: Path) -> None:
    """A batch's held-out keys (d_ff x 2048 float64 per layer: 128 MiB a layer for a 1B model) are
    kept for the weight state they were taken on only, not for every state a session went through."""
    from auditor.run.batch import edit_batch
    from auditor.run.edit import Editor

    editor = Editor(load_model(tiny_checkpoint("llama"), device="cpu"))
    states = []
    for pair in (TWO, TWO[::-1]):
        states.append(editor.fingerprint())
        res = edit_batch(editor, pair, method="memit", hparams=TINY_BATCH_HP, measure_ppl=False, allow_collapse=True)
        assert res.status == "applied", res.error
        assert editor.fingerprint() != states[-1]
    assert sorted(editor._held_out) == [(0, states[1]), (1, states[1])]  # the second batch's, not the first's


@pytest.mark.slow
@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_bfloat16_batch_edits_of_the_demo_are_as_effective_as_float32(demo, demo_dir: Path, method: str) -> None:
    """Two known facts in one batch: the same efficacy in bfloat16 as in float32 (dry runs)."""
    from auditor.model.requests import load_requests
    from auditor.run.batch import edit_batch
    from auditor.run.edit import Editor

    known = {r.case_id: r for r in load_requests(ROOT / "resources" / "demo" / "known_facts.json")}
    reqs = [known[c] for c in list(known)[:2]]
    hp = {"context_templates": ["{}", "The following is a fact. {}"], "mom2_n_tokens": 4096}
    half = load_model(demo_dir, device="cpu", dtype="bfloat16")
    results = {}
    for name, lm in (("float32", demo), ("bfloat16", half)):
        r = edit_batch(Editor(lm), reqs, method=method, hparams=hp, measure_ppl=False, dry_run=True)
        assert r.status == "dry-run", r.error
        results[name] = r.metrics["efficacy"]
    assert results["bfloat16"] == results["float32"] > 0, results


def test_a_calibration_of_an_offloaded_model_measures_its_matrix_and_puts_its_store_back(
        tiny_checkpoint, isolated_cache: Path, tmp_path: Path) -> None:
    """calibrate() reads the edited matrix from the offload store (a meta tensor has no norm) and
    restores it there; the figures are the in-memory model's."""
    from auditor.model.checkpoint import fingerprint_model
    from auditor.run.calibration import calibrate
    from auditor.run.edit import Editor

    folder = tiny_checkpoint("llama")
    ref = load_model(folder, device="cpu")
    off = load_model(folder, device="cpu", max_memory={"cpu": 2 << 20}, offload_folder=tmp_path / "off")
    name = off.spec.weight_name(TINY_ROME_HP["layer"])
    assert is_offloaded(off.model, name)
    base = read_param(off.model, name).clone()
    requests = [FRANCE, *TWO]
    cals = [calibrate(Editor(lm), requests, n_noop=1, hparams=TINY_ROME_HP) for lm in (ref, off)]
    assert cals[1].samples["norm_jump"] == pytest.approx(cals[0].samples["norm_jump"], rel=1e-5)
    assert len(cals[1].samples["norm_jump"]) >= 3
    assert torch.equal(read_param(off.model, name), base) and fingerprint_model(off.model) == off.fingerprint
