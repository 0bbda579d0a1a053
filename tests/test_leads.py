"""Any set of leads (issue 21): lead-set parsing, the two reduced-lead model variants, reading records
with fewer leads, training with lead masking, export of a reduced-lead network beside the 12-lead one,
and classifying 6-lead and 1-lead versions of real records through the app's inference path."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cpsc2018.leadsets import (
    STANDARD_SETS, LeadSampler, LeadSetError, LeadSupport, expand, parse_leads, presence, route, zero_absent,
)
from cpsc2018.readers import read_any
from cpsc2018.records import LEADS, RecordError
from mobile_app.inference import DEFAULT_MODEL, Classifier, ClassifyError
from resnet1d import create_model
from resnet1d.resnet import load_widened

SMALL = {"widths": [8, 16, 16, 24]}
ROOT = Path(__file__).resolve().parents[1]


def write_subset(rec, leads: list[str], folder: Path, name: str) -> Path:
    """A WFDB copy of a real record with only ``leads`` (in the order given), as a device would write it."""
    import wfdb

    rows = [LEADS.index(lead) for lead in leads]
    wfdb.wrsamp(name, fs=rec.fs, units=["mV"] * len(rows), sig_name=list(leads),
                p_signal=rec.signal[rows].T.astype(np.float64), fmt=["16"] * len(rows), write_dir=str(folder))
    return folder / f"{name}.hea"


# --- lead sets -------------------------------------------------------------------------------------


def test_parse_leads_names_sets_and_header_spellings():
    assert parse_leads("6") == ("I", "II", "III", "aVR", "aVL", "aVF")
    assert parse_leads("V2, I ,II") == ("I", "II", "V2")  # LEADS order whatever the order given
    assert parse_leads(["AVR", "avl"]) == ("aVR", "aVL")
    assert parse_leads("12") == LEADS


@pytest.mark.parametrize("text, match", [("I,V7", "unknown lead name.*V7"), ("I,i", "I given more than once"), (" , ", "no lead given")])
def test_parse_leads_errors_name_the_problem(text, match):
    with pytest.raises(LeadSetError, match=match):
        parse_leads(text)


def test_zero_expand_route():
    x = np.ones((2, 12, 5), dtype=np.float32)
    z = zero_absent(x, ("I", "V2"))
    assert z[:, [0, 7]].min() == 1 and np.count_nonzero(z) == 2 * 2 * 5
    e = expand(np.arange(10, dtype=np.float32).reshape(2, 5), ("II", "V1"))
    assert e.shape == (12, 5) and e[1, 0] == 0 and e[6, 0] == 5 and np.count_nonzero(e[[0, 2, 3, 4, 5, 7, 8, 9, 10, 11]]) == 0
    sets = list(STANDARD_SETS.values())
    assert route(LEADS, sets) == LEADS
    assert route(("I", "II", "III", "aVR", "aVL", "aVF", "V2", "V6"), sets) == STANDARD_SETS["6"]
    assert route(("I", "II", "V2", "V5"), sets) == STANDARD_SETS["3"]
    assert route(("II", "V1"), sets) is None


def test_lead_sampler_is_seeded_and_draws_every_kind():
    a, b = LeadSampler(3).masks(400), LeadSampler(3).masks(400)
    assert np.array_equal(a, b) and a.shape == (400, 12) and a.sum(axis=1).min() >= 1
    kinds = {tuple(int(v) for v in row) for row in a}
    for members in STANDARD_SETS.values():
        assert tuple(int(v) for v in presence(members)) in kinds
    assert len(kinds) > len(STANDARD_SETS)  # random subsets too (broken electrodes)


# --- models ----------------------------------------------------------------------------------------


def test_widened_lead_mask_model_starts_as_the_12_lead_one():
    torch.manual_seed(0)
    base = create_model("resnet1d18", **SMALL).eval()
    masked = create_model("resnet1d18", lead_mask=True, **SMALL).eval()
    assert load_widened(masked, base.state_dict()) == ["stem.0.0.weight", "head.1.weight"]
    x = torch.randn(3, 12, 1000)
    torch.testing.assert_close(masked(x), base(x), atol=1e-5, rtol=0)
    # Once trained, the mask matters: a non-zero mask weight changes the output for zeroed leads only.
    with torch.no_grad():
        masked.head[1].weight[:, -12:] = 1.0
    x6 = torch.from_numpy(zero_absent(x.numpy(), STANDARD_SETS["6"]))
    assert not torch.allclose(masked(x6), base(x6))
    # A checkpoint that fits neither way is refused by name.
    other = create_model("resnet1d18", widths=[8, 16, 16, 32]).state_dict()
    with pytest.raises(ValueError, match="cannot widen|does not fit"):
        load_widened(create_model("resnet1d18", lead_mask=True, **SMALL), other)


def test_fixed_set_model_ignores_the_other_leads_and_exports_so(tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    mask = [int(v) for v in presence(("I",))]
    model = create_model("resnet1d18", input_mask=mask, **SMALL).eval()
    x = torch.randn(2, 12, 1000)
    torch.testing.assert_close(model(x), model(torch.from_numpy(zero_absent(x.numpy(), ("I",)))))
    with pytest.raises(ValueError, match="input_mask"):
        create_model("resnet1d18", input_mask=[0] * 12)
    # The lead-mask model exports with one input, and the mask it derives survives ONNX.
    masked = create_model("resnet1d18", lead_mask=True, **SMALL).eval()
    with torch.no_grad():
        masked.head[1].weight[:, -12:] = torch.randn(6, 12)
    torch.onnx.export(masked, (x,), str(tmp_path / "m.onnx"), dynamo=False, input_names=["ecg"],
                      dynamic_axes={"ecg": {0: "batch", 2: "samples"}}, opset_version=17)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x1 = zero_absent(x.numpy(), ("I", "II"))
    got = sess.run(None, {"ecg": x1})[0]
    np.testing.assert_allclose(got, masked(torch.from_numpy(x1)).detach().numpy(), atol=1e-4)


# --- reading records with fewer leads ----------------------------------------------------------------


def test_reduced_record_reads_in_standard_order(data_dir, tmp_path):
    rec = read_any(data_dir / "cpsc2018" / "A0001.hea")
    hea = write_subset(rec, ["aVF", "I", "III", "II", "aVL", "aVR"], tmp_path, "six")
    six = read_any(hea)
    assert six.leads == STANDARD_SETS["6"] and six.signal.shape == (6, rec.signal.shape[1])
    np.testing.assert_allclose(six.signal, rec.signal[:6], atol=0.01)
    bad = write_subset(rec, ["I", "II"], tmp_path, "two")
    bad.write_text(bad.read_text().replace(" II\n", " X9\n"))
    with pytest.raises(RecordError, match=r"two\.hea: lead\(s\) X9 are not among the twelve standard leads"):
        read_any(bad)


# --- trained: base -> lead masking -> export -> the app -------------------------------------------


@pytest.fixture(scope="module")
def lead_folder(small_data, tmp_path_factory):
    from export.leads import add_lead_sets
    from export.onnx_export import export_fp32
    from federated.checkpoint import load_checkpoint
    from federated.train import main as train_main

    root = tmp_path_factory.mktemp("leads")
    cache = tmp_path_factory.mktemp("leads-cache")
    common = ["--data", str(small_data), "--cache-dir", str(cache), "--workers", "0", "--max-per-site", "40",
              "--model-kwargs", json.dumps(SMALL), "--seed", "2"]
    assert train_main([*common, "--out", str(root / "base"), "--epochs", "2"]) == 0
    assert train_main([*common, "--out", str(root / "masked"), "--epochs", "1", "--lead-masking",
                       "--init", str(root / "base" / "best.pt")]) == 0
    base, masked = load_checkpoint(root / "base" / "best.pt"), load_checkpoint(root / "masked" / "best.pt")
    folder = root / "ship"
    folder.mkdir()
    export_fp32(base, folder / "model.int8.onnx", window=2500)  # the file name the app's folder uses
    export_fp32(masked, root / "masked.onnx", window=2500)
    export_fp32(base, root / "base_only.onnx", window=2500)
    report = add_lead_sets(folder, [root / "masked.onnx"], small_data, log=lambda *_: None)
    return {"root": root, "folder": folder, "base": base, "masked": masked, "report": report}


def test_lead_masking_training_tunes_thresholds_per_set(lead_folder):
    masked = lead_folder["masked"]
    assert masked.model_kwargs.get("lead_mask") is True
    assert set(masked.lead_thresholds) == set(STANDARD_SETS)
    assert all(len(t) == 6 and all(0 < v < 1 for v in t) for t in masked.lead_thresholds.values())
    metrics = json.loads((lead_folder["root"] / "masked" / "metrics.json").read_text())
    assert set(metrics["lead_sets"]) == set(STANDARD_SETS)
    # The fp32 export lists every standard set, served by the file itself, for any subset.
    from export.metadata import read_onnx_metadata

    own = LeadSupport.from_json(read_onnx_metadata(str(lead_folder["root"] / "masked.onnx")).lead_sets)
    assert set(own.sets) == set(STANDARD_SETS) and all(e.any_subset and e.model == "" for e in own.sets.values())


def test_export_leads_writes_the_sibling_and_per_set_choices(lead_folder):
    folder, report = lead_folder["folder"], lead_folder["report"]
    assert (folder / "model.leads.int8.onnx").is_file() and (folder / "leads_report.md").is_file()
    clf = Classifier(folder / "model.int8.onnx")
    support = clf.lead_support
    assert set(support.sets) == set(STANDARD_SETS)
    assert support.sets["12"].model == "" and support.sets["1"].model == "model.leads.int8.onnx"
    for name in ("6", "4", "3", "2", "1"):
        e = support.sets[name]
        assert e.any_subset and len(e.thresholds) == 6 and e.calibration is not None
        assert report["sets"][name]["validation"]["macro"]["auroc"] == report["sets"][name]["validation"]["macro"]["auroc"]


def test_six_and_one_lead_records_classify_through_the_app(lead_folder, data_dir, tmp_path):
    clf = Classifier(lead_folder["folder"] / "model.int8.onnx")
    rec = read_any(data_dir / "cpsc2018" / "A0001.hea")
    full = clf.classify(data_dir / "cpsc2018" / "A0001.hea")
    assert full.lead_set == "12" and full.leads_used == list(LEADS)
    for name, leads in (("6", list(STANDARD_SETS["6"])), ("1", ["I"])):
        r = clf.classify(write_subset(rec, leads, tmp_path, f"A0001_{name}"))
        assert r.lead_set == name and r.leads_used == leads and r.record_leads == leads
        assert len(r.probabilities) == 6 and all(0 <= p <= 1 for p in r.probabilities)
        assert r.display.shape[0] == 12 and not r.withheld and r.lead_note.startswith(f"Classified on {len(leads)} lead")
        # The same as asking for these leads of the 12-lead file (the 16-bit copy rounds to 1 uV).
        same = clf.classify(data_dir / "cpsc2018" / "A0001.hea", leads=leads)
        np.testing.assert_allclose(r.probabilities, same.probabilities, atol=0.02)
        assert same.lead_set == name
    # A 12-lead model without the sibling network would refuse them (what the app did before).
    plain = Classifier(lead_folder["root"] / "masked.onnx")
    assert plain.classify(tmp_path / "A0001_1.hea").lead_set == "1"


def test_unsupported_lead_sets_are_clear_errors(lead_folder, data_dir, tmp_path):
    clf = Classifier(lead_folder["folder"] / "model.int8.onnx")
    rec = read_any(data_dir / "cpsc2018" / "A0001.hea")
    hea = write_subset(rec, ["V1", "V2"], tmp_path, "precordial")
    with pytest.raises(ClassifyError, match=r"precordial\.hea: no model here supports its leads \(V1, V2\)\. Supported lead sets: 12 .*; 1 \(I\)"):
        clf.classify(hea)
    with pytest.raises(ClassifyError, match=r"has lead\(s\) V1, V2; the leads asked for include I, which it lacks"):
        clf.classify(hea, leads=("I", "V1"))
    with pytest.raises(ClassifyError, match=r"100\.hea: no model here supports its leads \(MLII, V5\)"):
        clf.classify(data_dir / "mitbih" / "100.hea")
    # The command line says it in one line, exit code 2, no traceback.
    out = subprocess.run([sys.executable, "-m", "mobile_app.classify", "--model", str(lead_folder["folder"] / "model.int8.onnx"),
                          "--record", str(hea)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "no model here supports its leads (V1, V2)" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "mobile_app.classify", "--record", str(hea), "--leads", "I,V9"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "unknown lead name(s) V9" in out.stderr and "Traceback" not in out.stderr


def test_dead_leads_route_a_12_lead_record_to_the_reduced_set(lead_folder, data_dir):
    clf = Classifier(lead_folder["folder"] / "model.int8.onnx")
    rec = read_any(data_dir / "cpsc2018" / "A0001.hea")
    x = rec.signal.copy()
    dead = ["V1", "V3", "V4", "V5"]  # four flat leads: more than the three the quality check allows
    for lead in dead:
        x[LEADS.index(lead)] = 0.0
    r = clf.classify_record(dataclasses.replace(rec, signal=x))
    assert r.quality is not None and not r.quality.usable and set(r.quality.dead_leads) == set(dead)
    assert r.dropped_leads == dead and r.lead_set == "6" and not r.withheld
    assert r.leads_used == [lead for lead in LEADS if lead not in dead]
    # Without the reduced-lead network the same record is withheld, as before.
    only12 = Classifier(lead_folder["root"] / "base_only.onnx")
    r12 = only12.classify_record(dataclasses.replace(rec, signal=x))
    assert r12.withheld and r12.lead_set == "12" and r12.dropped_leads == []


def test_evaluate_scores_a_lead_set_with_its_own_network(lead_folder, small_data):
    from federated.evaluate import evaluate_model

    path = lead_folder["folder"] / "model.int8.onnx"
    r = evaluate_model(path, small_data, split="test", leads=STANDARD_SETS["2"])
    assert r["leads"] == ["I", "II"] and "lead set 2 (model.leads.int8.onnx)" in r["lead_note"]
    # A set the file does not serve is scored naively (leads zeroed, 12-lead thresholds) and says so.
    naive = evaluate_model(lead_folder["root"] / "base_only.onnx", small_data, split="test", leads=("II", "V1"))
    assert "naive" in naive["lead_note"] and naive["records"] == r["records"]


def test_shipped_model_serves_every_standard_set(data_dir, tmp_path):
    if not Path(DEFAULT_MODEL).exists():
        pytest.fail(f"the shipped model {DEFAULT_MODEL} is missing: run 'make model'")
    clf = Classifier(DEFAULT_MODEL)
    assert set(clf.lead_support.sets) == set(STANDARD_SETS)
    # The networks cross-validation chose (benchmarks/results/leads.md): one per set for I and for I+II.
    assert clf.lead_support.sets["1"].model == "model.leads1.int8.onnx" and not clf.lead_support.sets["1"].any_subset
    assert clf.lead_support.sets["2"].model == "model.leads2.int8.onnx"
    assert clf.lead_support.sets["6"].model == "model.leads.int8.onnx" and clf.lead_support.sets["6"].any_subset
    rec = read_any(data_dir / "cpsc2018" / "A0001.hea")  # labelled RBBB
    for name in ("6", "1"):
        r = clf.classify(write_subset(rec, list(STANDARD_SETS[name]), tmp_path, f"ship{name}"))
        assert r.lead_set == name and r.parts == ["network"] and all(0 <= p <= 1 for p in r.probabilities)
    sizes = sum(p.stat().st_size for p in Path(DEFAULT_MODEL).parent.glob("*.onnx"))
    assert sizes < 5_000_000  # the app's model budget (DECISIONS.md)


def test_app_window_shows_a_one_lead_recording(data_dir, tmp_path):
    """The real Kivy window (Xvfb) opens a single-lead copy of a real record and a 12-lead record asked
    for its six limb leads, and shows what the inference path computes for them."""
    from tests.test_app_ui import _run_app

    rec = read_any(data_dir / "cpsc2018" / "A0001.hea")
    one = write_subset(rec, ["I"], tmp_path, "A0001_I")
    _, shown = _run_app(DEFAULT_MODEL, one, tmp_path, tag="one")
    expected = Classifier(DEFAULT_MODEL).classify(one)
    assert shown["lead_set"] == "1" and shown["leads_used"] == ["I"] and shown["record_leads"] == ["I"]
    assert shown["probabilities"] == pytest.approx(expected.probabilities, abs=1e-5)
    _, shown = _run_app(DEFAULT_MODEL, data_dir / "cpsc2018" / "A0001.hea", tmp_path, "--leads", "6", tag="six")
    assert shown["lead_set"] == "6" and shown["leads_used"] == list(STANDARD_SETS["6"]) and "explanation" not in shown


@pytest.mark.parametrize("flags, message", [
    (["--mode", "federated", "--leads", "6"], "for central training of the record task"),
    (["--model", "squeezenet1d", "--lead-masking"], "squeezenet1d has no lead-mask input"),
    (["--leads", "6", "--lead-masking"], "give one"),
    (["--leads", "I,X"], "unknown lead name"),
])
def test_training_flags_are_checked(flags, message):
    out = subprocess.run([sys.executable, "-m", "federated.train", *flags], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
