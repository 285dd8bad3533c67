"""Ledger and export timings: append N entries, list, search, verify; export the demo model.

Run::

    python bench/bench_ledger.py                 # 10,000 entries, then the demo export
    python bench/bench_ledger.py --entries 1000 --no-export --json

Every entry carries a real rank-one delta of the demo model's down-projection shape
(576 x 1536 float32 factors, one safetensors file each, fsynced) and full diagnostics, so the
append time includes what an edit really writes. The export is of a demo workspace, in
float32 and bfloat16, sharded at 200 MB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from auditor.engine.deltas import Delta
from auditor.record.ledger import Ledger


def _entry(i: int) -> dict:
    return {
        "status": "applied" if i % 7 else "rejected", "method": "rome", "key_mode": "consistent",
        "layer": 4, "param": "model.layers.4.mlp.down_proj.weight",
        "subject": f"Landmark number {i}", "prompt": f"Landmark number {i} is located in the country of",
        "target_new": ("Italy", "Japan", "Germany", "Brazil")[i % 4], "target_true": "France",
        "efficacy": 1.0, "ppl_before": 72.05, "ppl_after": 72.16, "ppl_ratio": 1.0016, "denominator": 6.38,
        "diagnostics": {"denominator": 6.38, "loss_curve": [4.1 / (k + 1) for k in range(25)]},
        "metrics": {"efficacy": 1.0, "target_prob": 0.97}, "timings": {"v": 12.0, "total": 20.0},
        "hparams": {"layer": 4, "v_num_grad_steps": 25}, "device": "cpu", "dtype": "float32",
        "fingerprint_before": "sha256:" + "a" * 64, "fingerprint_after": "sha256:" + "b" * 64,
    }


def _delta(i: int) -> Delta:
    g = torch.Generator().manual_seed(i)
    return Delta(param="model.layers.4.mlp.down_proj.weight", transposed=False,
                 left=torch.randn(576, generator=g), right=torch.randn(1536, generator=g))


def _timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def bench_ledger(n: int, folder: Path) -> dict:
    ledger = Ledger.create(folder / "ledger.db", {"base_fingerprint": "sha256:" + "0" * 64, "dtype": "float32"})
    deltas = [_delta(i) for i in range(n)]  # built outside the timed loop
    t0 = time.perf_counter()
    for i in range(n):
        ledger.append(_entry(i), delta=deltas[i])
    append_s = time.perf_counter() - t0
    entries, list_s = _timed(ledger.entries)
    hits, search_s = _timed(lambda: ledger.search(f"landmark {n // 2 + 1}"))
    many, search_many_s = _timed(lambda: ledger.search("italy", limit=n))
    report, verify_s = _timed(ledger.verify)
    _, verify_rows_s = _timed(lambda: ledger.verify(check_deltas=False))
    assert report["ok"] and len(entries) == n and hits
    size = (folder / "ledger.db").stat().st_size + sum(f.stat().st_size for f in (folder / "deltas").iterdir())
    ledger.close()
    return {
        "entries": n, "append_s": round(append_s, 2), "append_per_s": round(n / append_s, 1),
        "list_s": round(list_s, 3), "search_one_s": round(search_s, 4), "search_italy_hits": len(many),
        "search_italy_s": round(search_many_s, 4), "verify_s": round(verify_s, 2),
        "verify_without_delta_files_s": round(verify_rows_s, 3), "bytes_on_disk": size,
    }


def bench_export(folder: Path) -> dict:
    from auditor.run.workspace import Workspace

    ws = Workspace.init("demo", folder / "ws", device="cpu")  # the export cost does not depend on edits
    out = {}
    for dtype in ("float32", "bfloat16"):
        target = folder / f"export-{dtype}"
        _, seconds = _timed(lambda: ws.export(target, dtype=dtype, max_shard_size="200MB"))
        size = sum(f.stat().st_size for f in target.iterdir() if f.suffix == ".safetensors")
        out[dtype] = {"seconds": round(seconds, 2), "weights_mb": round(size / 1e6, 1),
                      "mb_per_s": round(size / 1e6 / seconds, 1),
                      "shards": len(list(target.glob("*.safetensors")))}
    _, seconds = _timed(lambda: ws.export(folder / "patch", patch=True))
    out["patch_s"] = round(seconds, 3)
    ws.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000, help="entries to append (default 10000)")
    parser.add_argument("--no-export", action="store_true", help="skip the demo model export")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    try:
        result = {"ledger": bench_ledger(args.entries, folder / "ledger")}
        if not args.no_export:
            result["export"] = bench_export(folder / "export")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for section, values in result.items():
            print(f"[{section}]")
            for k, v in values.items():
                print(f"  {k:<32} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
