"""Live peak of each memory-relevant function of an edit, relative to live at the edit's start."""
import sys, time, threading, json
sys.path.insert(0, "/work/main/bench"); sys.path.insert(0, "/work/main")
from pathlib import Path
import torch
torch.set_num_threads(1)
from bench_scale import live_bytes, make_checkpoint, TEMPLATES, V_TOKENS
from auditor.model.offload import give_freed_buffers_back
shape, dtype = sys.argv[1], sys.argv[2]
folder = make_checkpoint(shape, Path(f"/tmp/shapes/{shape}"))
from auditor.model.checkpoint import load_model
from auditor.model.memory_plan import plan_memory
from auditor.run.edit import Editor
from auditor.run.batch import edit_batch
from auditor.model.requests import load_requests
import auditor.measure.metrics as M, auditor.measure.collateral as CO, auditor.engine.rome as R, auditor.engine.methods as ME
import auditor.engine.memit as MM
lm = load_model(folder, dtype=dtype, device="cpu")
st = {"p": 0, "start": 0, "depth": 0}
samples = []
def poll():
    while True:
        samples.append((time.perf_counter(), live_bytes())); time.sleep(0.0005)
threading.Thread(target=poll, daemon=True).start()
def peak_between(t0, t1):
    return max([v for t, v in samples if t0 <= t <= t1] or [0])
log = {}
def wrap(mod, name, label=None):
    f = getattr(mod, name); label = label or name
    def g(*a, **k):
        if st["depth"]:
            return f(*a, **k)
        st["depth"] += 1
        b0 = live_bytes(); t0 = time.perf_counter()
        if label == "score" and st.get("dump"):
            st["dump"] = False
            import gc, collections
            params = {p.untyped_storage().data_ptr() for p in lm.model.parameters()}
            c = collections.Counter(); seen = set()
            for o in gc.get_objects():
                try:
                    if torch.is_tensor(o) and o.device.type == "cpu":
                        ptr = o.untyped_storage().data_ptr()
                        if ptr in params or ptr in seen: continue
                        seen.add(ptr)
                        c[(tuple(o.shape), str(o.dtype))] += o.untyped_storage().nbytes()
                except Exception:
                    pass
            print("LIVE", round((b0 - st["start"])/2**20,1), sorted(c.items(), key=lambda x: -x[1])[:14], sum(c.values())/2**20, flush=True)
        try:
            return f(*a, **k)
        finally:
            time.sleep(0.002)
            e = (b0 - st["start"]) / 2**20; pk = (max(b0, peak_between(t0, time.perf_counter())) - st["start"]) / 2**20
            log.setdefault(label, []).append((round(e, 1), round(pk, 1)))
            st["depth"] -= 1
    setattr(mod, name, g)
wrap(M, "score"); wrap(CO, "target_scores"); wrap(CO, "preservation_cost"); wrap(R, "optimise_values")
wrap(CO, "module_inputs_at"); wrap(ME, "held_out_change"); import auditor.engine.stats as STS; wrap(STS, "held_out_keys"); wrap(MM.torch.linalg, "solve", "linalg_solve"); wrap(ME, "symmetric_condition")
reqs = load_requests(Path("/work/main/tests/data/counterfact_100.json"))
hp = {"context_templates": TEMPLATES, "mom2_n_tokens": 2048, "v_num_grad_steps": 3}
ed = Editor(lm)
ed.edit(reqs[0], hparams=hp, measure_ppl=False)
give_freed_buffers_back(); time.sleep(0.02); st["start"] = live_bytes(); log.clear(); T0 = time.perf_counter()
ed.edit(reqs[1], hparams=hp, measure_ppl=False); time.sleep(0.01)
out = {"rome": dict(log), "rome_peak": round((peak_between(T0, time.perf_counter()) - st["start"]) / 2**20, 1)}
samples.clear()
mhp = {**hp, "mom2_update_weight": 100.0}
edit_batch(ed, reqs[2:3], method="memit", hparams=mhp, measure_ppl=False)
give_freed_buffers_back(); time.sleep(0.02); st["start"] = live_bytes(); log.clear()
samples.clear(); T0 = time.perf_counter(); st["dump"] = True
give_freed_buffers_back(); st["start"] = live_bytes()
import gc, collections
params = {p.untyped_storage().data_ptr() for p in lm.model.parameters()}
print("START", sum(o.untyped_storage().nbytes() for o in gc.get_objects() if torch.is_tensor(o) and o.untyped_storage().data_ptr() not in params)/2**20)
edit_batch(ed, reqs[3:13], method="memit", hparams=mhp, measure_ppl=False)
out["memit"] = dict(log); out["memit_peak"] = round((peak_between(T0, time.perf_counter()) - st["start"]) / 2**20, 1)
print("RESULT", shape, dtype, json.dumps(out))
