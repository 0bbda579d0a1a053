"""Signal quality (cpsc2018/quality.py) on real records: clean ones mostly pass; a lead zeroed, missing,
clipped, buried in noise, or the arms swapped is flagged; the verdict follows the rules."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cpsc2018.quality import BAD_FLAGS, assess
from cpsc2018.readers import read_any
from cpsc2018.records import LEADS

N_CLEAN = 60  # the first CPSC2018 records of the shared folder: a fixed subset (issue 20 report: whole-folder figures)


@pytest.fixture(scope="module")
def records(data_dir):
    paths = sorted((data_dir / "cpsc2018").glob("A*.hea"))[:N_CLEAN]
    assert len(paths) == N_CLEAN
    return [read_any(p) for p in paths]


@pytest.fixture(scope="module")
def clean(records):
    """Records whose verdict is good, with their quality."""
    out = [(r, q) for r in records for q in [assess(r.signal, r.fs)] if q.verdict == "good"]
    assert len(out) >= 10
    return out


def test_module_needs_neither_torch_nor_kivy():
    code = "import sys, cpsc2018.quality; print('torch' in sys.modules, 'kivy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_clean_records_mostly_pass(records):
    verdicts = [assess(r.signal, r.fs).verdict for r in records]
    good = verdicts.count("good") / len(verdicts)
    assert good >= 0.8, f"only {good:.0%} of the first {N_CLEAN} CPSC2018 records judged good: {verdicts}"
    assert "unusable" not in verdicts


def test_zeroed_and_missing_leads_are_bad(clean):
    for rec, _ in clean[:8]:
        x = rec.signal.copy()
        x[LEADS.index("V1")] = 0.0
        x[LEADS.index("aVL")] = np.nan
        q = assess(x, rec.fs)
        assert q.bad_leads == ("aVL", "V1"), (rec.record_id, q.reasons)
        flags = {lq.lead: lq.flags for lq in q.leads}
        assert flags["V1"] == ["flat"] and flags["aVL"] == ["missing"]
        assert q.verdict == "usable" and q.usable
        assert any("V1" in reason for reason in q.reasons)


def test_many_dead_leads_make_the_record_unusable(clean):
    rec, _ = clean[0]
    x = rec.signal.copy()
    x[6:11] = 0.0  # V1-V5
    q = assess(x, rec.fs)
    assert q.verdict == "unusable" and not q.usable
    assert q.bad_leads == ("V1", "V2", "V3", "V4", "V5")
    assert "5 of 12 leads unreadable" in q.reasons[0]
    short = assess(rec.signal[:, : int(1.5 * rec.fs)], rec.fs)
    assert short.verdict == "unusable" and short.record_flags == ["too_short"]


def test_clipped_lead_is_flagged(clean):
    for rec, before in clean[:8]:
        k = LEADS.index("II")
        x = rec.signal.copy()
        lo, hi = np.percentile(x[k], [2, 98])  # an amplifier whose range ends inside the signal
        x[k] = np.clip(x[k], lo, hi)
        q = assess(x, rec.fs)
        assert "clipped" in q.leads[k].flags, (rec.record_id, q.leads[k].measures)
        assert "clipped" not in before.leads[k].flags


def test_noise_added_is_flagged(clean):
    rng = np.random.default_rng(0)
    for rec, before in clean[:8]:
        k = LEADS.index("V3")
        x = rec.signal.copy()
        x[k] = x[k] + rng.normal(0.0, 1.0, x.shape[1]).astype(np.float32)  # 1 mV rms broadband (EMG-like)
        q = assess(x, rec.fs)
        assert "noise" in q.leads[k].flags and "V3" in q.bad_leads, (rec.record_id, q.leads[k].measures)
        assert "noise" not in before.leads[k].flags
        assert q.verdict != "good"


def arm_swap(x: np.ndarray) -> np.ndarray:
    """Left/right arm electrodes swapped: I -> -I, II <-> III, aVR <-> aVL, aVF unchanged."""
    i, ii, iii, avr, avl, avf = x[:6]
    return np.stack([-i, iii, ii, avl, avr, avf, *x[6:]]).astype(np.float32)


def test_limb_lead_reversal_is_flagged(clean):
    # The sign test needs a deflection in lead I to invert: records with an upright net QRS (> 0.05 mV)
    # and P wave (> 0.01 mV) in lead I. Of every tenth record of the shared folder, 67 % of the swaps were flagged.
    eligible = [(r, q) for r, q in clean if q.leads[0].measures.get("qrs_net_mv", 0) > 0.05
                and q.leads[0].measures.get("p_net_mv", 0) > 0.01]
    assert len(eligible) >= 8, len(eligible)
    hits = []
    for rec, before in eligible:
        assert "limb_reversal" not in before.record_flags
        q = assess(arm_swap(rec.signal), rec.fs)
        hits.append("limb_reversal" in q.record_flags)
        if hits[-1]:
            assert q.verdict == "usable" and any("swapped" in reason for reason in q.reasons)
    assert np.mean(hits) >= 0.75, f"{sum(hits)} of {len(hits)} swaps flagged"


def test_json_and_bad_input(clean):
    rec, _ = clean[0]
    q = assess(rec.signal, rec.fs)
    j = q.to_json()
    assert j["verdict"] == "good" and set(j["leads"]) == set(LEADS) and j["n_beats"] >= 5
    assert set(BAD_FLAGS) == {"missing", "flat", "clipped", "noise"}
    with pytest.raises(ValueError, match="expected 12 leads"):
        assess(rec.signal[:3], rec.fs)
    with pytest.raises(ValueError, match="2-D"):
        assess(rec.signal[0], rec.fs)
