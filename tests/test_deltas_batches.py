"""Deltas of rank > 1 over several layers, and batch entries in the ledger (no model loaded).

* a rank-r factor pair is kept as factors when smaller than the product, as the product otherwise;
  both save, load and hash exactly, and ``apply_delta`` writes what they hold;
* a :class:`DeltaSet` (one part per layer plus recorded tensors) round-trips through a file and the
  ledger, and ``apply_delta(..., params=...)`` applies only the named parts;
* m003: a ledger written before the batch columns existed migrates and still verifies, and a batch
  entry (its requests, its parameters) hashes and verifies like any other.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch

from auditor.engine.deltas import Delta, DeltaSet, apply_delta, load_delta
from auditor.record.ledger import Ledger

GENESIS = {"base_fingerprint": "sha256:" + "cd" * 32, "dtype": "float32", "base_source": "demo"}
P4, P5 = "layers.4.weight", "layers.5.weight"


def factors(seed: int, out: int = 12, n_in: int = 20, r: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(out, r, generator=g, dtype=torch.float64),
            torch.randn(n_in, r, generator=g, dtype=torch.float64))


class Two(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.layers = torch.nn.ModuleDict({"4": torch.nn.Linear(20, 12), "5": torch.nn.Linear(20, 12)})
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g)


def test_factored_or_dense_whichever_is_smaller(tmp_path: Path) -> None:
    L, R = factors(1, r=3)  # 3 * (12 + 20) = 96 < 240: factors
    small = Delta.factored(P4, False, L, R)
    assert small.full is None and small.rank == 3
    L, R = factors(2, r=8)  # 8 * 32 = 256 >= 240: the product
    big = Delta.factored(P4, False, L, R)
    assert big.full is not None and big.left is None and big.rank == -1
    assert torch.equal(big.dense(), L @ R.T)
    for d in (small, big):
        d.save(tmp_path / "d.safetensors")
        back = load_delta(tmp_path / "d.safetensors")
        assert isinstance(back, Delta) and back.content_hash() == d.content_hash()
        assert torch.equal(back.dense(), d.dense())
    assert small.content_hash() != big.content_hash()


def test_rank_one_delta_hash_is_unchanged() -> None:
    """Deltas written by the first release keep their content hash (ledgers still verify)."""
    d = Delta(P4, False, torch.arange(3.0), torch.arange(4.0))
    assert d.content_hash() == "sha256:" + __import__("hashlib").sha256(
        b'{"left":["torch.float32",[3]],"param":"layers.4.weight","right":["torch.float32",[4]],"transposed":false}'
        + torch.arange(3.0).numpy().tobytes() + torch.arange(4.0).numpy().tobytes()).hexdigest()


def test_delta_set_round_trip_and_partial_apply(tmp_path: Path) -> None:
    parts = [Delta.factored(P4, False, *factors(3)), Delta.factored(P5, False, *factors(4))]
    keys = {"keys." + P4: torch.randn(20, 3), "keys." + P5: torch.randn(20, 3)}
    ds = DeltaSet(parts, keys)
    ds.save(tmp_path / "s.safetensors")
    back = load_delta(tmp_path / "s.safetensors")
    assert isinstance(back, DeltaSet) and back.params == [P4, P5]
    assert back.content_hash() == ds.content_hash()
    assert all(torch.equal(back.tensors[k], keys[k]) for k in keys)
    changed = DeltaSet(parts, {**keys, "keys." + P5: keys["keys." + P5] + 1})
    assert changed.content_hash() != ds.content_hash()  # the recorded state is part of the hash

    model = Two()
    w4, w5 = (model.get_parameter(p).detach().clone() for p in (P4, P5))
    apply_delta(model, back, params=[P5])
    assert torch.equal(model.get_parameter(P4), w4)
    expected5 = (w5.double() + parts[1].dense()).float()
    assert torch.equal(model.get_parameter(P5), expected5)
    apply_delta(model, back, params=[P4])
    assert torch.equal(model.get_parameter(P4), (w4.double() + parts[0].dense()).float())
    # an applied patch's set may change a parameter twice: the parts apply in order, like two entries
    twice = DeltaSet([parts[0], parts[1], parts[0]])
    assert twice.params == [P4, P5]
    one_by_one = Two()
    for part in (parts[0], parts[1], parts[0]):
        apply_delta(one_by_one, part)
    together = Two()
    apply_delta(together, twice)
    for p in (P4, P5):
        assert torch.equal(together.get_parameter(p), one_by_one.get_parameter(p))


def _batch_fields() -> dict:
    return {"status": "applied", "method": "memit", "layer": 5, "params": [P4, P5], "n_requests": 2,
            "requests": [{"subject": "Angola", "prompt": "{} is located in", "target_new": "Antarctica"},
                         {"subject": "Ghana", "prompt": "{} is in", "target_new": "Asia"}],
            "subject": "Angola\nGhana", "prompt": "Angola is located in\nGhana is in", "target_new": "Antarctica\nAsia",
            "diagnostics": {"layers": [{"layer": 4, "update_ratio": 0.01}, {"layer": 5, "update_ratio": 0.02}]},
            "metrics": {"efficacy": 1.0, "per_request": [{"efficacy": 1.0}, {"efficacy": 1.0}]}}


def test_a_ledger_from_before_m003_migrates_and_verifies(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    led = Ledger.create(path, GENESIS)
    single = Delta(P4, False, torch.randn(12), torch.randn(20))
    led.append({"status": "applied", "method": "rome", "layer": 4, "param": P4, "subject": "France"}, delta=single)
    led.close()
    # make it a first-release ledger: no batch columns, no m003 record (its one entry's hash never saw them)
    conn = sqlite3.connect(path)
    for col in ("requests", "n_requests", "params"):
        conn.execute(f"ALTER TABLE entries DROP COLUMN {col}")
    conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm003_batches'")
    conn.commit()
    conn.close()
    # ... with the head file of its time (version 1: the newest entry and the high-water mark only;
    # a version-2 head commits to the schema, so the change above would rightly be tampering)
    head_file = path.with_name("ledger.head")
    head = json.loads(head_file.read_text())
    head_file.write_text(json.dumps({**{k: head[k] for k in ("format", "ledger_id", "last_id", "head", "high_water")},
                                     "version": 1}))

    led = Ledger(path)  # migrates
    assert "m003_batches" in led.schema_version
    assert led.verify()["ok"]
    ds = DeltaSet([Delta.factored(P4, False, *factors(5)), Delta.factored(P5, False, *factors(6))])
    entry = led.append(_batch_fields(), delta=ds)
    assert entry["params"] == [P4, P5] and entry["n_requests"] == 2 and len(entry["requests"]) == 2
    assert led.verify()["ok"]
    assert led.load_delta(entry.delta_hash).content_hash() == ds.content_hash()
    assert [e.id for e in led.search("Ghana")] == [2]
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):  # the migration kept the triggers
        led.db.conn.execute("UPDATE entries SET n_requests = 3 WHERE id = 2")
    led.close()
