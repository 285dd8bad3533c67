"""Thresholds calibrated per model (run/calibration.py, ``edit-auditor calibrate``): the tail rule and
the horizon rule, storage, loading, the source every verdict records (tiny random Llama), and one
small calibration of the demo model (bench/bench_calibration.py runs the 100-edit check)."""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path
from typing import Any

import pytest

from auditor.cli import main
from auditor.model.checkpoint import fingerprint_model, load_model
from auditor.model.requests import EditRequest, load_requests
from auditor.run import calibration
from auditor.run.calibration import (Calibration, CalibrationError, horizon_limit, per_edit_rate, tail_limit,
                                     thresholds_for)
from auditor.run.edit import Editor
from auditor.run.monitor import Thresholds

TINY_HP = {"layer": 1, "mom2_n_tokens": 4096, "mom2_seq_len": 64, "v_num_grad_steps": 6, "context_n": 2,
           "context_len": 4}
KNOWN_FACTS = Path(__file__).parent.parent / "resources" / "demo" / "known_facts.json"


def test_per_edit_rate_makes_the_run_rate() -> None:
    a = per_edit_rate(0.01, 100)
    assert (1 - a) ** 100 == pytest.approx(0.99) and 1e-4 < a < 1.01e-4
    assert per_edit_rate(0.05, 1) == pytest.approx(0.05)
    with pytest.raises(CalibrationError, match="between 0 and 1"):
        per_edit_rate(1.5, 100)


def test_tail_limit_is_the_exponential_rule() -> None:
    xs = [1.0, 1.01, 1.02, 1.03, 1.04]
    rec = tail_limit(xs, 1e-3, "max")
    assert rec["median"] == pytest.approx(1.02) and rec["scale"] == pytest.approx(0.015)
    assert rec["threshold"] == pytest.approx(1.02 + 0.015 * math.log(0.5 / 1e-3))
    low = tail_limit(xs, 1e-3, "min")
    assert low["threshold"] == pytest.approx(1.02 - 0.015 * math.log(0.5 / 1e-3))
    # in log space, and never tighter than the worst value seen; identical samples get the floor
    logged = tail_limit([2.0, 2.0, 2.0, 8.0], 0.4, "max", log=True)
    assert logged["threshold"] >= 8.0 and logged["worst_seen"] == pytest.approx(8.0)
    flat = tail_limit([1.0, 1.0, 1.0], 1e-4, "max", log=True)
    assert flat["threshold"] == pytest.approx(math.exp(calibration.LOG_FLOOR * math.log(0.5 / 1e-4)))
    with pytest.raises(CalibrationError, match="at least 3"):
        tail_limit([1.0, float("nan"), 2.0], 0.01)


def test_tail_limit_holds_its_rate_on_exponential_tails() -> None:
    """From 20 samples of a shifted exponential, the limit for 1% is crossed by about 1% of new draws
    (averaged over many calibrations: the estimate is noisy, its mean is not far off)."""
    rng = random.Random(0)
    rates = []
    for _ in range(200):
        limit = tail_limit([1 + rng.expovariate(50) for _ in range(20)], 0.01)["threshold"]
        rates.append(math.exp(-(limit - 1) * 50))  # P(X > limit) exactly
    assert 0.003 < statistics.fmean(rates) < 0.03


def test_wild_samples_give_a_capped_limit_not_an_overflow() -> None:
    """A random tiny model's edits moved its matrix's norm x8 to x40 each: 100 of them extrapolated is
    past the float range, and the calibration failed with OverflowError (the offloaded-calibration
    test on a tiny model did). The limit is infinite, then capped at the loosest bound, recorded."""
    jumps = [8.0, 12.0, 40.0, 9.5, 20.0, 15.0]
    assert horizon_limit(jumps, 0.01, 100)["threshold"] == math.inf
    assert tail_limit([1e300, 1e-300, 1.0, 1e250, 1e-250], 0.01, "max", log=True)["threshold"] == math.inf
    guard, monitor, figures = calibration.limits({"norm_jump": jumps, "ppl_jump": jumps}, rate=0.01)
    assert monitor["max_norm_ratio"] == calibration.LOOSEST["monitor.max_norm_ratio"]
    assert figures["norm_ratio"]["capped"]["fitted"] == math.inf


def test_one_healthy_jump_inside_the_per_edit_limit_does_not_cross_the_trend_limit() -> None:
    """Session 9's 100-edit healthy run: one edit's perplexity jump of 3.4% (limit 5%) made a trend of
    0.0093 against a fitted 0.0099 limit; a jump at the limit would have stopped the run by itself.
    The trend limit is now at least the slope that one jump inside the per-edit limit makes."""
    from auditor.run.monitor import slope

    rng = random.Random(3)
    noise = [1.0 + rng.uniform(-0.002, 0.002) for _ in range(20)]  # healthy per-edit jumps, tight
    trends = [rng.uniform(-0.0005, 0.001) for _ in range(8)]
    guard, monitor, figures = calibration.limits({"ppl_jump": noise, "ppl_trend": trends}, rate=0.01)
    jump = monitor["max_ppl_jump"]
    window = Thresholds().trend_window
    for at in range(1, window):  # one jump just inside the limit, anywhere in the window
        logs = [0.0] * at + [math.log(jump * 0.999)] * (window - at)
        assert slope(logs) <= monitor["max_ppl_trend"], (at, slope(logs), monitor["max_ppl_trend"])
    assert calibration.one_jump_slope(5) == pytest.approx(0.3)
    assert figures["ppl_trend"]["one_jump"]["fitted"] < monitor["max_ppl_trend"]
    # two such jumps in one window (a sustained rise) still cross it
    logs = [0.0, 0.0, 0.0] + [math.log(jump * 0.999)] + [2 * math.log(jump * 0.999)]
    assert slope(logs) > monitor["max_ppl_trend"]


def test_horizon_limit_is_the_sum_of_log_jumps() -> None:
    jumps = [1.004, 1.006, 1.005, 1.003, 1.007]
    rec = horizon_limit(jumps, 0.01, 100)
    logs = [math.log(j) for j in jumps]
    mu, sigma = statistics.fmean(logs), statistics.stdev(logs)
    # the mean's upper bound from 5 edits (here the exponential one: 2 sum / chi2_0.01(10), chi2 = 2.558)
    # over H edits, and the run's own spread (sqrt H)
    mu_up = max(mu + 2.3263 * sigma / math.sqrt(5), 2 * sum(logs) / 2.558)
    assert rec["mu_upper"] == pytest.approx(mu_up, rel=0.02) and rec["mu_bound"] == "exponential"
    assert rec["threshold"] == pytest.approx(math.exp(100 * rec["mu_upper"] + 2.3263 * sigma * 10), rel=1e-4)
    # a shorter horizon, a lower limit
    assert horizon_limit(jumps, 0.01, 10)["threshold"] < rec["threshold"]


def test_the_drift_bound_holds_its_rate_on_skewed_jumps() -> None:
    # per-edit log growth exponential (most edits small, a few large): the bound on the mean from
    # n = 10 edits is under the true mean in about `rate` of the calibrations, not in a third of them
    rng = random.Random(3)
    for n, mean in ((10, 0.004), (20, 0.001)):
        under = 0
        for _ in range(2000):
            jumps = [math.exp(rng.expovariate(1 / mean)) for _ in range(n)]
            under += horizon_limit(jumps, 0.01, 100)["mu_upper"] < mean
        assert under / 2000 < 0.02
        normal_only = sum(statistics.fmean(xs) + 2.3263 * statistics.stdev(xs) / math.sqrt(n) < mean
                          for xs in ([rng.expovariate(1 / mean) for _ in range(n)] for _ in range(2000)))
        assert normal_only / 2000 > 0.02  # what the normal bound alone gave


def test_limits_keep_defaults_with_too_few_samples() -> None:
    samples = {"norm_jump": [1.01, 1.02, 1.015, 1.012], "ppl_jump": [1.0, 1.01]}
    guard, monitor, figures = calibration.limits(samples)
    assert set(monitor) == {"max_norm_jump", "max_norm_ratio"} and guard == {}
    assert figures["ppl_jump"]["rule"] == "default" and "2 usable samples" in figures["ppl_jump"]["why"]
    assert 1.02 <= monitor["max_norm_jump"] < Thresholds().max_norm_jump


def test_storage_round_trip_and_damaged_files(tmp_path: Path) -> None:
    fp = "sha256:" + "ab" * 32
    assert calibration.load(fp, tmp_path) is None
    assert thresholds_for(fp, tmp_path)[2] == "defaults"
    cal = Calibration(fingerprint=fp, guard={"max_ppl_ratio": 1.07}, monitor={"max_norm_jump": 1.03})
    path = calibration.save(cal, tmp_path)
    assert path.parent == tmp_path and ":" not in path.name
    guard, thresholds, source = thresholds_for(fp, tmp_path)
    assert source == f"calibrated {fp}" and guard.max_ppl_ratio == 1.07 and thresholds.max_norm_jump == 1.03
    assert thresholds.max_ppl_jump == Thresholds().max_ppl_jump  # not calibrated: the default
    assert not list(tmp_path.glob("*.tmp*"))  # written through a temporary file, renamed
    path.write_text("{not json")
    with pytest.raises(CalibrationError, match="not a calibration file") as e:
        calibration.load(fp, tmp_path)
    assert "\n" not in str(e.value)
    path.write_text(json.dumps({**cal.to_dict(), "monitor": {"max_norm_jump": "high"}}))
    with pytest.raises(CalibrationError, match="not a finite number"):
        calibration.load(fp, tmp_path)
    other = "sha256:" + "cd" * 32
    calibration.calibration_path(other, tmp_path).write_text(json.dumps(cal.to_dict()))
    with pytest.raises(CalibrationError, match="holds the calibration of"):
        calibration.load(other, tmp_path)


def _requests(n: int = 4) -> list[EditRequest]:
    pairs = [("France", "Rome"), ("Germany", "Oslo"), ("Italy", "Lima"), ("Spain", "Cairo"), ("Japan", "Bern")]
    return [EditRequest(prompt="The capital of {} is", subject=s, target_new=t, target_true="Paris", case_id=s.lower())
            for s, t in pairs[:n]]


def test_verdicts_record_their_thresholds_and_source(tiny_checkpoint, isolated_cache: Path, tmp_path: Path) -> None:
    from auditor.run.workspace import Workspace

    folder = tiny_checkpoint("llama")
    lm = load_model(folder, device="cpu")
    fp = fingerprint_model(lm.model)
    res = Editor(lm).edit(_requests(1)[0], hparams=TINY_HP, dry_run=True)
    assert res.diagnostics["thresholds_source"] == "defaults"
    assert res.diagnostics["thresholds"]["max_ppl_ratio"] == 1.5
    calibration.save(Calibration(fingerprint=fp, guard={"max_ppl_ratio": 1.0001}, monitor={"max_norm_jump": 1.001}))
    res = Editor(lm).edit(_requests(1)[0], hparams=TINY_HP, dry_run=True)
    assert res.diagnostics["thresholds_source"] == f"calibrated {fp}"
    assert res.diagnostics["thresholds"]["max_ppl_ratio"] == 1.0001

    # a workspace on that model: its entries and its sequence steps say the same
    ws = Workspace.init(folder, tmp_path / "ws", device="cpu")
    try:
        _result, entry = ws.edit(_requests(1)[0], hparams=TINY_HP, allow_collapse=True)
        assert entry["diagnostics"]["thresholds_source"] == f"calibrated {fp}"
    finally:
        ws.close()
    requests = tmp_path / "requests.json"
    requests.write_text(json.dumps([r.to_json() for r in _requests(3)]))
    out = tmp_path / "run.jsonl"
    code = main(["sequence", "--workspace", str(tmp_path / "ws"), "--requests", str(requests), "--hparams",
                 json.dumps(TINY_HP), "--allow-collapse", "--stop-on", "norm_jump,ppl=9", "--device", "cpu",
                 "--out", str(out), "--quiet"])
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    final = lines[-1]
    assert final["thresholds_source"] == f"calibrated {fp}; set by --stop-on: ppl"
    assert final["thresholds"]["max_norm_jump"] == 1.001 and final["thresholds"]["max_ppl_ratio"] == 9
    # a healthy rank-one edit of the tiny model moves its norm by more than 0.1%: stopped at once
    assert code == 1 and final["stopped_at_step"] == 1 and "norm_jump" in final["reason"]


def test_cli_calibrate_a_tiny_model(tiny_checkpoint, isolated_cache: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    folder = tiny_checkpoint("llama")
    fp = fingerprint_model(load_model(folder, device="cpu").model)
    requests = tmp_path / "requests.json"
    requests.write_text(json.dumps([r.to_json() for r in _requests(4)]))
    capsys.readouterr()
    assert main(["calibrate", str(folder), "--requests", str(requests), "--noop", "2", "--hparams",
                 json.dumps(TINY_HP), "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fingerprint"] == fp and Path(out["path"]) == calibration.calibration_path(fp)
    cal = calibration.load(fp)
    assert cal is not None and cal.edits["healthy"] == 4 and len(cal.samples["norm_jump"]) >= 4
    # never tighter than the worst calibration edit, unless that is past the loosest limit (a tiny
    # random model: one edit doubled the norm), which is then the limit, recorded as capped
    loosest = calibration.LOOSEST["monitor.max_norm_jump"]
    assert cal.monitor["max_norm_jump"] >= min(max(cal.samples["norm_jump"]), loosest)
    assert cal.monitor["max_norm_jump"] <= loosest
    capped = cal.figures["norm_jump"].get("capped")
    # cut exactly when the fitted limit is past the loosest one (always, when an edit itself is)
    if capped is not None:
        assert capped["fitted"] > loosest == cal.monitor["max_norm_jump"]
    else:
        assert max(cal.samples["norm_jump"]) <= cal.monitor["max_norm_jump"] <= loosest
    assert set(cal.not_calibrated) >= {"monitor.min_retention", "guard.max_update_ratio"}
    # the model file is untouched and the thresholds are found for it
    assert thresholds_for(fp)[2] == f"calibrated {fp}"
    with pytest.raises(SystemExit) as e:
        main(["calibrate", str(folder), "--rate", "2"])
    assert e.value.code == 2 and "a false-alarm rate is between 0 and 1" in capsys.readouterr().err
    assert main(["calibrate", str(folder), "--requests", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edit-auditor: error:") and "none.json" in err and err.count("\n") == 1


@pytest.mark.slow
def test_demo_calibration_small(demo: Any, tmp_path: Path) -> None:
    """Two no-op and three healthy edits of the demo: the weights come back bit for bit, every tail
    limit sits beyond every healthy value seen, and the jump limits are tighter than the defaults."""
    fp = fingerprint_model(demo.model)
    editor = Editor(demo)
    editor.collateral = None  # the audit has its own tests; here it would double the time
    cal = calibration.calibrate(editor, load_requests(KNOWN_FACTS)[:3], n_noop=2)
    assert fingerprint_model(demo.model) == fp and cal.fingerprint == fp
    assert cal.edits["noop"] == 2 and cal.edits["healthy"] == 3 and not cal.edits["skipped"]
    print(json.dumps({k: {x: v.get(x) for x in ("threshold", "median", "worst_seen", "n")}
                      for k, v in cal.figures.items()}, indent=1))
    for name, rec in cal.figures.items():
        if rec["rule"] == "tail":
            worst = max(cal.samples[name]) if rec["kind"] == "max" else min(cal.samples[name])
            assert (rec["threshold"] >= worst) if rec["kind"] == "max" else (rec["threshold"] <= worst), name
    assert 1.0 < cal.monitor["max_norm_jump"] < Thresholds().max_norm_jump
    assert cal.monitor["max_norm_ratio"] > cal.monitor["max_norm_jump"]
    calibration.save(cal, tmp_path)
    assert thresholds_for(fp, tmp_path)[1].max_norm_jump == cal.monitor["max_norm_jump"]


def test_cli_calibrate_a_workspace(tiny_checkpoint, isolated_cache: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    """WS: calibrated for its base model's fingerprint, on the model as it is; the ledger untouched."""
    from auditor.run.workspace import Workspace

    ws = Workspace.init(tiny_checkpoint("llama"), tmp_path / "ws", device="cpu")
    ws.edit(_requests(1)[0], hparams=TINY_HP, allow_collapse=True)
    base, now, n = ws.base_fingerprint, ws.fingerprint, len(ws.ledger.entries())
    ws.close()
    requests = tmp_path / "requests.json"
    requests.write_text(json.dumps([r.to_json() for r in _requests(4)[1:]]))
    assert main(["calibrate", str(tmp_path / "ws"), "--requests", str(requests), "--noop", "0", "--hparams",
                 json.dumps(TINY_HP), "--device", "cpu", "--quiet"]) == 0
    assert "calibrated " + base in capsys.readouterr().err
    cal = calibration.load(base)
    assert cal is not None and cal.edits == {**cal.edits, "noop": 0, "healthy": 3}
    ws = Workspace.open(tmp_path / "ws", device="cpu")
    try:
        assert ws.fingerprint == now and len(ws.ledger.entries()) == n
        assert ws.editor.thresholds_source == f"calibrated {base}"
    finally:
        ws.close()


def test_a_calibration_never_sets_a_limit_nothing_can_reach() -> None:
    # three noisy healthy edits extrapolated to 100: honest but absurdly wide limits, cut at LOOSEST
    jumps = [1.0, 1.5, 3.0]
    samples = {"ppl_jump": jumps, "norm_jump": jumps, "cond_jump": jumps, "denominator": [1e-9, 1e-6, 1e-3]}
    guard, monitor, figures = calibration.limits(samples)
    assert monitor["max_norm_ratio"] == calibration.LOOSEST["monitor.max_norm_ratio"]
    assert figures["norm_ratio"]["capped"]["fitted"] > 1e6
    assert guard["min_denominator"] == calibration.LOOSEST["guard.min_denominator"]
    for name, rec in figures.items():
        if rec["rule"] == "default":
            continue
        value, bound = rec["threshold"], calibration.LOOSEST[rec["field"]]
        assert math.isfinite(value) and (value <= bound if rec["kind"] == "max" else value >= bound), name
    # a tight, honest calibration is kept as it is
    _, monitor, figures = calibration.limits({"norm_jump": [1.004, 1.005, 1.006, 1.004, 1.005] * 2})
    assert "capped" not in figures["norm_ratio"] and monitor["max_norm_ratio"] < 5.0


def test_a_calibration_never_sets_a_limit_healthy_noise_crosses() -> None:
    # 20 quiet no-op-like edits fit a per-edit perplexity limit of about 1.01; a healthy CounterFact
    # edit moved perplexity 3.4% (bench run B): the limit is widened to TIGHTEST, the collapse
    # (ppl_jump 1.118, norm_jump 1.544) still crosses it
    quiet = [1.0 + 0.0002 * i for i in range(20)]
    guard, monitor, figures = calibration.limits({"edit_ppl_ratio": quiet, "ppl_jump": quiet, "norm_jump": quiet,
                                                  "denominator": [5.0 + i for i in range(20)]})
    assert guard["max_ppl_ratio"] == calibration.TIGHTEST["guard.max_ppl_ratio"] == 1.05
    assert figures["edit_ppl_ratio"]["widened"]["fitted"] < 1.02
    assert guard["min_denominator"] <= calibration.TIGHTEST["guard.min_denominator"]
    assert 1.034 < monitor["max_ppl_jump"] < 1.118 and monitor["max_norm_jump"] < 1.544
    for field, low in calibration.TIGHTEST.items():
        assert low != calibration.LOOSEST[field] and (low < calibration.LOOSEST[field]) == field.split(".")[1].startswith("max")


def test_the_default_calibration_requests_are_counterfact_records_no_test_or_bench_edits():
    # counterfactual edits move a model more than re-asserting known facts: limits set on the known
    # facts stopped a healthy CounterFact run (issue 19); the default is ten held-out CounterFact records
    from auditor.model.resources import resource_path

    shipped = load_requests(resource_path(calibration.DEFAULT_REQUESTS))
    edited = load_requests(Path(__file__).parent / "data" / "counterfact_100.json")
    assert len(shipped) == 10 and all(r.target_true and r.neighborhood and r.paraphrases for r in shipped)
    assert not {(r.subject, r.prompt) for r in shipped} & {(r.subject, r.prompt) for r in edited}
    assert all(r.target_new != r.target_true for r in shipped)


def test_refit_sets_the_limits_again_from_the_stored_samples() -> None:
    rng = random.Random(5)
    samples = {"norm_jump": [1 + rng.uniform(0, 0.004) for _ in range(20)],
               "ppl_jump": [1 + rng.uniform(-0.003, 0.003) for _ in range(20)]}
    drift = {"norm_jump": samples["norm_jump"][10:], "ppl_jump": samples["ppl_jump"][10:]}
    guard, monitor, figures = calibration.limits(samples, drift)
    stale = Calibration(fingerprint="sha256:x", monitor={k: 9.0 for k in monitor}, samples=samples, drift=drift,
                        edits={"requests": list("abcdefghij"), "skipped": []})
    fresh = calibration.refit(stale)
    assert fresh.monitor == monitor and fresh.guard == guard and "refitted" in fresh.edits
    # a file written before the healthy jumps were stored: they are the last healthy samples
    old = Calibration.from_dict({**stale.to_dict(), "drift": {}})
    assert calibration.refit(old).monitor == monitor
    assert Calibration.from_dict(json.loads(json.dumps(fresh.to_dict()))).drift == drift
