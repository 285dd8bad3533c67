"""MEMIT and AlphaEdit on the real demo model with CounterFact requests (tests/data/counterfact_100.json).

* one MEMIT batch of 10 requests: efficacy >= 0.9 with a perplexity ratio <= 1.1;
* AlphaEdit as 3 sequential batches of 4 in a workspace: the first batch still holds (efficacy
  >= 0.75) after the third; reverting the middle batch and replaying from the base reproduces the
  fingerprint and the key memory, which no longer holds that batch's keys.

The longer runs (MEMIT and AlphaEdit over 10, 50 and 100 requests, batched and sequential) are
bench/bench_methods.py's; the suite keeps sizes that show the same properties in minutes.

Both runs use the shipped hyper-parameters (resources/hparams/memit_llama.json and
alphaedit_llama.json) with fewer v* steps and fixed context templates to keep the suite short.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor.measure import metrics
from auditor.model.requests import load_requests
from auditor.run.workspace import Workspace, key_memory_fingerprint

pytestmark = pytest.mark.slow

DATA = Path(__file__).parent / "data" / "counterfact_100.json"
FAST = {"v_num_grad_steps": 15, "context_templates": ["{}", "The following is a fact. {}", "I read that. {}"]}


@pytest.fixture(scope="module")
def requests() -> list:
    return load_requests(DATA)


def _efficacy(lm, requests) -> float:
    return sum(metrics.success(lm, [r.text], r.target_new, r.target_true)[0] for r in requests) / len(requests)


def test_memit_batch_of_10_counterfact_requests(requests: list, tmp_path: Path) -> None:
    ws = Workspace.init("demo", tmp_path / "memit", device="cpu")
    result, entry = ws.edit_batch(requests[:10], method="memit", hparams=FAST)
    assert result.status == "applied", result.error
    assert result.metrics["efficacy"] >= 0.9, result.metrics
    assert result.metrics["ppl_ratio"] <= 1.1, result.metrics
    assert entry["n_requests"] == 10 and len(entry["params"]) == len(result.layers) > 1
    assert all(d["update_ratio"] < 0.5 for d in result.diagnostics["layers"])
    ws.close()


def test_alphaedit_three_sequential_batches_then_revert_and_replay(requests: list, tmp_path: Path) -> None:
    ws = Workspace.init("demo", tmp_path / "alpha", device="cpu")
    ws.editor.collateral = None  # about the key memory, revert and replay; the audit: test_collateral.py
    batches = [requests[4 * i:4 * (i + 1)] for i in range(3)]
    entries, fingerprints = [], []
    for batch in batches:
        result, entry = ws.edit_batch(batch, method="alphaedit", hparams=FAST, measure_ppl=False)
        assert result.status == "applied", result.error
        entries.append(entry)
        fingerprints.append(ws.fingerprint)
    first_after_three = _efficacy(ws.lm, batches[0])
    assert first_after_three >= 0.75
    memory_all = key_memory_fingerprint(ws.key_memory())

    ws.revert(entries[1].id, note="the middle batch")
    assert ws.fingerprint not in fingerprints
    replay = ws.replay()
    assert replay["match"] and replay["applied"] == 2
    assert replay["key_memory"] == key_memory_fingerprint(ws.key_memory()) != memory_all
    assert ws.verify()["ok"]
    ws.close()
    reopened = Workspace.open(tmp_path / "alpha", device="cpu")  # rebuilt from the ledger alone
    assert reopened.fingerprint == replay["fingerprint"]
    reopened.close()
