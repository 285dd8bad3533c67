"""How time and memory grow with the model: random-weight Llama models of real shapes, with the
memory plan's prediction beside every measured peak.

For each shape (``bench/model_shapes.py``: SmolLM2-135M, SmolLM2-360M, a Llama-3.2-1B-class
model) and dtype, in a fresh subprocess (so that each peak is its own): random weights of that
shape are saved once as safetensors with the demo's tokenizer, then

* ``load``: ``load_model`` (seconds; peak resident memory vs the plan's weights),
* ``fingerprint``: ``fingerprint_model`` again (seconds; memory it adds: should be ~0, streamed),
* ``stats``: key statistics of one layer over ``--stats-tokens`` tokens (seconds per layer; the
  memory above the weights vs the plan's statistics pass),
* ``rome``: one ROME edit (C cached; with the perplexity check before and after, as the product's
  edits run, ``--no-ppl`` without; seconds; the peak above what the process held when the edit
  began, vs the plan's working memory of an edit without a statistics pass: :func:`edit_working`),
* ``memit``: one MEMIT batch of ``--batch`` requests (same),

and each edit's peak by progress phase (stats, keys, v, audit, eval). ``--phases`` runs some of
``stats,rome,memit`` only (e.g. one process for ``stats,rome`` and another for ``memit``, when one
process would not finish in the time there is); the child prints each finished phase's figures to
stderr as it goes (``partial {...}``), so a run stopped midway keeps what it measured.
``--trim`` gives freed memory back to the system (gc + glibc ``malloc_trim``) before each phase's
baseline: without it, an edit reuses what earlier phases freed and glibc kept, so what it adds
depends on the heap's history (the same 135M edit: 63 or 116 MiB); with it, repeatable to ~3%.

Peaks are anonymous resident memory (RssAnon, sampled every 10 ms from /proc: file pages of
memory-mapped checkpoints are left out), minus the interpreter's own before loading; and, beside
each edit's, its *live* peak: the bytes glibc's allocator has handed out and not had back
(``mallinfo2``: arenas in use + mmapped blocks), sampled alike. Live memory is what the tensors
need, which is what the plan sums; resident memory is that plus what the allocator keeps of freed
blocks for reuse (on the small shapes as much again: many blocks under glibc's mmap threshold),
which no sum of tensor sizes can predict. A float32
checkpoint loaded in float32 is memory-mapped: its weights are file pages (``load_file``, RssFile
after the load), so its load peak is not the weights, but what a phase or an edit adds above what
the process held before it is measured alike for every dtype. Random weights give meaningless
edits but the same shapes, so the same memory and time.

    python bench/bench_scale.py                                  # all shapes, bfloat16 and float32
    python bench/bench_scale.py --shapes smollm2-135m --dtypes float32 --stats-tokens 2048 --steps 5
    python bench/bench_scale.py --shapes llama-3.2-1b --dtypes bfloat16 --phases memit

The load average is printed: timings on a shared machine are only indicative.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from model_shapes import llama_config  # noqa: E402

from auditor.model.offload import live_bytes  # noqa: E402

REQUESTS = HERE.parent / "tests" / "data" / "counterfact_100.json"
TEMPLATES = ["{}", "The following is a fact. {}"]
V_TOKENS = 12  # tokens of a v* prompt here: a CounterFact prompt (~7) behind "The following is a fact." (~5)


def rss_anon(field: str = "RssAnon") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


class Peak:
    """The largest RssAnon seen since the last :meth:`reset`, sampled on a thread."""

    def __init__(self, trim: bool = False) -> None:
        self.trim = trim  # give freed memory back (gc + malloc_trim) before each new baseline
        self.value = 0
        self.live = self.live_base = 0  # glibc's bytes in use: the peak, and at the last reset
        self.phase = "-"
        self.phases: dict[str, int] = {}  # the peak of each progress phase since the last reset
        self.live_phases: dict[str, int] = {}
        threading.Thread(target=self._poll, daemon=True).start()

    def _poll(self) -> None:
        while True:
            now, live = rss_anon(), live_bytes()
            self.value = max(self.value, now)
            self.live = max(self.live, live)
            self.phases[self.phase] = max(self.phases.get(self.phase, 0), now)
            self.live_phases[self.phase] = max(self.live_phases.get(self.phase, 0), live)
            time.sleep(0.01)

    def enter(self, progress) -> None:
        """An edit's progress callback: later samples count toward its phase (stats, v, update, eval)."""
        self.phase = progress.phase

    def reset(self) -> int:
        time.sleep(0.03)
        value = self.value
        if self.trim:
            from auditor.model.offload import give_freed_buffers_back

            give_freed_buffers_back()
        self.value = rss_anon()
        self.live = self.live_base = live_bytes()
        self.phases, self.live_phases, self.phase = {}, {}, "-"
        return value

    def live_added(self) -> int:
        """The live peak since the last reset, above the live bytes at that reset."""
        return self.live - self.live_base

    def by_phase(self, minus: int) -> dict[str, int]:
        return {k: v - minus for k, v in self.phases.items()}

    def live_by_phase(self) -> dict[str, int]:
        return {k: v - self.live_base for k, v in self.live_phases.items()}


def make_checkpoint(shape: str, folder: Path) -> Path:
    """Random weights of ``shape`` saved in float32 (once), with the demo's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from auditor.model.checkpoint import demo_folder

    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(llama_config(shape), dtype=torch.float32)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(demo_folder()).save_pretrained(folder)
    return folder


PHASES = ("stats", "rome", "memit")


def partial(row: dict) -> None:
    """What is measured so far, to stderr (the parent passes it through): kept if the run is stopped."""
    print("partial " + json.dumps(row), file=sys.stderr, flush=True)


def measure(folder: Path, dtype: str, args: argparse.Namespace) -> dict:
    """One shape and dtype (run in its own process); ``args.phases``: which of :data:`PHASES`."""
    import torch

    from auditor.engine import stats
    from auditor.model.checkpoint import fingerprint_model, load_model
    from auditor.model.memory_plan import plan_memory
    from auditor.model.requests import load_requests
    from auditor.run.edit import Editor

    torch.set_num_threads(args.threads)
    peak = Peak(trim=args.trim)
    base = peak.reset()
    base_file = rss_anon("RssFile")
    # the v* prompts this benchmark uses: its fixed templates and the KL prompt, ~12 tokens each
    plans = {m: plan_memory(folder, dtype=dtype, method=m, requests=n, prompts=len(TEMPLATES) + 1,
                            prompt_tokens=V_TOKENS) for m, n in (("rome", 1), ("memit", args.batch))}
    row: dict = {"dtype": dtype, "parameters": plans["rome"].parameters}
    t = time.perf_counter()
    lm = load_model(folder, dtype=dtype, device="cpu")
    row["load_s"] = time.perf_counter() - t
    row["load_peak"] = peak.reset() - base
    row["plan_weights"] = plans["rome"].weights
    weights = rss_anon() - base
    # a float32 checkpoint loaded in float32 is memory-mapped: its weights are file pages, not RssAnon
    row["load_file"] = rss_anon("RssFile") - base_file
    t = time.perf_counter()
    fingerprint_model(lm.model)
    row["fingerprint_s"] = time.perf_counter() - t
    row["fingerprint_extra"] = peak.reset() - base - weights
    partial(row)
    phases = set(args.phases.split(","))
    hp = {"context_templates": TEMPLATES, "mom2_n_tokens": args.stats_tokens, "v_num_grad_steps": args.steps}
    editor = Editor(lm)
    rome_hp = editor.hparams(hp)
    row["plan_stats_pass"] = plans["rome"].stats_pass
    row["plan_rome_working"] = edit_working(plans["rome"])
    row["plan_memit_working"] = edit_working(plans["memit"])
    row["plan_peak_memit"] = plans["memit"].peak
    requests = load_requests(REQUESTS)
    if "stats" in phases:
        t = time.perf_counter()
        from auditor.model.corpus import read_text, stats_text_path

        windows = stats.corpus_tokens(lm, read_text(stats_text_path()), args.stats_tokens, rome_hp.mom2_seq_len)
        stats.collect_second_moment(lm, rome_hp.layer, windows)
        row["stats_s_per_layer"] = time.perf_counter() - t
        row["stats_live"] = peak.live_added()
        row["stats_extra"] = peak.reset() - base - weights
        partial(row)
    if "rome" in phases:
        measure_rome(editor, requests, hp, peak, base, weights, row, ppl=not args.no_ppl)
        partial(row)
    if "memit" in phases:
        measure_memit(editor, requests, hp, peak, base, weights, row, args.batch, ppl=not args.no_ppl)
    if phases == set(PHASES):
        row["peak_total"] = max(row["load_peak"], weights + max(
            row["stats_extra"], row["rome_start"] + row["rome_extra"], row["memit_start"] + row["memit_extra"]))
    return row


def measure_rome(editor, requests: list, hp: dict, peak: Peak, base: int, weights: int, row: dict,
                 ppl: bool = True) -> None:
    """One ROME edit with its key statistics cached (a first edit computes and caches them);
    ``ppl``: with the perplexity check before and after, as the product's edits run by default."""
    editor.edit(requests[0], hparams=hp, measure_ppl=ppl)  # statistics computed and cached here
    peak.reset()
    row["rome_start"] = rss_anon() - base - weights  # what the process holds before the edit
    t = time.perf_counter()
    r = editor.edit(requests[1], hparams=hp, measure_ppl=ppl, progress=peak.enter)
    row["rome_s"] = time.perf_counter() - t
    row["rome_phases"] = peak.by_phase(base + weights)
    row["rome_live_phases"] = peak.live_by_phase()
    row["rome_live"] = peak.live_added()
    row["rome_status"] = r.status
    row["rome_extra"] = peak.reset() - base - weights - row["rome_start"]  # what the edit added


def measure_memit(editor, requests: list, hp: dict, peak: Peak, base: int, weights: int, row: dict,
                  batch: int, ppl: bool = True) -> None:
    """One MEMIT batch of ``batch`` requests, the C of every edited layer cached by a batch before."""
    from auditor.run.batch import edit_batch

    mhp = {**hp, "mom2_update_weight": 100.0}
    edit_batch(editor, requests[2:3], method="memit", hparams=mhp, measure_ppl=ppl)  # C of every layer, cached
    peak.reset()
    row["memit_start"] = rss_anon() - base - weights
    t = time.perf_counter()
    b = edit_batch(editor, requests[3:3 + batch], method="memit", hparams=mhp, measure_ppl=ppl,
                   progress=peak.enter)
    row["memit_s"] = time.perf_counter() - t
    row["memit_phases"] = peak.by_phase(base + weights)
    row["memit_live_phases"] = peak.live_by_phase()
    row["memit_live"] = peak.live_added()
    row["memit_status"] = getattr(b, "status", "?")
    row["memit_extra"] = peak.reset() - base - weights - row["memit_start"]


def edit_working(plan) -> int:
    """The plan's working memory of an edit whose key statistics are cached (no statistics pass;
    ROME reads its C from the cache during the edit, MEMIT holds its Cs from the batch before,
    so they are in what the process held when the edit began, not in what the edit adds; so are
    the held-out keys of the batch before, which a batch's own replace: the Editor keeps one weight
    state's)."""
    return (plan.stats_held if plan.method == "rome" else 0) + max(plan.v_star, plan.solve, plan.evaluate, plan.audit,
                                                                   plan.perplexity)


def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / (1 << 20):.0f}"


def secs(n: float | None, digits: int = 1) -> str:
    return "-" if n is None else f"{n:.{digits}f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="smollm2-135m,smollm2-360m,llama-3.2-1b")
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--stats-tokens", type=int, default=8192)
    p.add_argument("--steps", type=int, default=10, help="v* steps (random weights never converge)")
    p.add_argument("--batch", type=int, default=10, help="MEMIT batch size")
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    p.add_argument("--phases", default=",".join(PHASES),
                   help="which measured phases run after the load and fingerprint (default: all)")
    p.add_argument("--no-ppl", action="store_true",
                   help="edits without the perplexity check (the product runs it before and after each edit)")
    p.add_argument("--trim", action="store_true",
                   help="give freed memory back (gc + malloc_trim) before each phase: steadier figures")
    p.add_argument("--workdir", type=Path, default=None, help="where random checkpoints are kept (default: temp)")
    p.add_argument("--one", nargs=2, metavar=("FOLDER", "DTYPE"), help=argparse.SUPPRESS)  # the subprocess
    args = p.parse_args()
    if set(args.phases.split(",")) - set(PHASES):
        p.error(f"--phases: a comma-separated subset of {','.join(PHASES)}")
    if args.one:
        print(json.dumps(measure(Path(args.one[0]), args.one[1], args)))
        return
    import psutil

    from auditor.model.memory_plan import plan_config

    print(f"load average {os.getloadavg()}, {args.threads} threads, stats {args.stats_tokens} tokens, "
          f"{args.steps} v* steps, MEMIT batch {args.batch}, phases {args.phases}, trim {args.trim}, "
          f"perplexity check {not args.no_ppl}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    cols = ["shape", "dtype", "params", "load s", "load MiB", "plan weights", "fp s", "fp +MiB",
            "stats s/layer", "stats +MiB", "live", "plan stats", "rome s", "rome +MiB", "live", "plan rome",
            "memit s", "memit +MiB", "live", "plan memit"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    phases: list[str] = []
    for shape in args.shapes.split(","):
        for dtype in args.dtypes.split(","):
            need = plan_config(llama_config(shape), dtype=dtype, method="memit", requests=args.batch).peak
            need += plan_config(llama_config(shape), dtype="float32").weights  # the saved checkpoint's page cache
            if need > psutil.virtual_memory().available:
                print(f"| {shape} | {dtype} | skipped: the plan needs {mib(need)} MiB, "
                      f"{mib(psutil.virtual_memory().available)} MiB available |")
                continue
            folder = make_checkpoint(shape, work / shape)
            cmd = [sys.executable, __file__, "--one", str(folder), dtype, "--stats-tokens", str(args.stats_tokens),
                   "--steps", str(args.steps), "--batch", str(args.batch), "--threads", str(args.threads),
                   "--phases", args.phases] + (["--trim"] if args.trim else []) + (["--no-ppl"] if args.no_ppl else [])
            # the child's stderr (its partial figures) passes through, to be kept if the run is stopped
            out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True,
                                 env={**os.environ, "PYTHONPATH": str(HERE.parent)})
            if out.returncode:
                print(f"| {shape} | {dtype} | failed: exit code {out.returncode} (its stderr is above) |")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print("| " + " | ".join([
                shape, dtype, f"{r['parameters'] / 1e6:.0f}M", f"{r['load_s']:.1f}", mib(r["load_peak"]),
                mib(r["plan_weights"]), f"{r['fingerprint_s']:.2f}", mib(r["fingerprint_extra"]),
                secs(r.get("stats_s_per_layer")), mib(r.get("stats_extra")), mib(r.get("stats_live")),
                mib(r["plan_stats_pass"]), secs(r.get("rome_s")), mib(r.get("rome_extra")), mib(r.get("rome_live")),
                mib(r["plan_rome_working"]), secs(r.get("memit_s")), mib(r.get("memit_extra")),
                mib(r.get("memit_live")), mib(r["plan_memit_working"])]) + " |", flush=True)
            phases.append(f"{shape} {dtype}: " + "; ".join(
                f"{edit} " + ", ".join(f"{k} {mib(v)} (live {mib(r[f'{edit}_live_phases'].get(k))})"
                                       for k, v in r[f"{edit}_phases"].items())
                for edit in ("rome", "memit") if f"{edit}_phases" in r) + f" (MiB above the weights; raw {json.dumps(r)})")
    print("\npeak by phase of the measured edits:")
    print("\n".join(phases))
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
