"""Patient-level splits: no leak, deterministic, stratified; by site."""

import csv
from collections import Counter

import numpy as np
import pytest

from cpsc2018.catalog import scan
from cpsc2018.splits import split_by_patient, split_by_site


@pytest.fixture(scope="module")
def entries(twelve_lead_entries):
    return twelve_lead_entries


def test_no_patient_in_two_splits(entries):
    parts = split_by_patient(entries, seed=0)
    owner = {}
    for name, es in parts.items():
        for e in es:
            assert owner.setdefault(e.patient_id, name) == name, e.patient_id
    assert sum(len(v) for v in parts.values()) == len(entries)


def test_ptbxl_patients_with_several_recordings_stay_together(entries, data_dir):
    rows = list(csv.DictReader(open(data_dir / "ptbxl" / "ptbxl_database.csv")))
    counts = Counter(r["patient_id"] for r in rows)
    multi = {f"ptbxl-{int(float(p))}" for p, n in counts.items() if n > 1}
    assert multi, "the shared PTB-XL subset should hold patients with several recordings"
    parts = split_by_patient(entries, seed=5)
    for pid in multi:
        where = {name for name, es in parts.items() for e in es if e.patient_id == pid}
        assert len(where) == 1


def test_deterministic_by_seed(entries):
    a = split_by_patient(entries, seed=1)
    b = split_by_patient(entries, seed=1)
    c = split_by_patient(entries, seed=2)
    assert [e.key for e in a["test"]] == [e.key for e in b["test"]]
    assert [e.key for e in a["test"]] != [e.key for e in c["test"]]


def test_stratified_and_fractions(entries):
    parts = split_by_patient(entries, seed=0)
    n = len(entries)
    assert abs(len(parts["train"]) / n - 0.7) < 0.05
    assert abs(len(parts["test"]) / n - 0.15) < 0.05
    total = np.sum([e.targets() for e in entries], axis=0)
    for name, frac in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        got = np.sum([e.targets() for e in parts[name]], axis=0)
        assert np.all(got >= 1), (name, got)  # every label present in every split
        assert np.all(np.abs(got - frac * total) <= np.maximum(2, 0.25 * frac * total)), (name, got, frac * total)


def test_bad_fractions(entries):
    with pytest.raises(ValueError, match="fractions"):
        split_by_patient(entries, fractions=(0.5, 0.5, 0.5))


def test_split_by_site(entries):
    sites = split_by_site(entries)
    assert {k: len(v) for k, v in sites.items()} == {
        "CPSC-Extra": 8, "CPSC2018": 129, "Chapman/Ningbo": 71, "Georgia": 24, "PTB": 8, "PTB-XL": 452,
    }


def test_patient_folds_partition_records_and_keep_patients_apart(entries):
    from cpsc2018.splits import patient_folds

    folds = patient_folds(entries, k=5, seed=0)
    assert len(folds) == 5
    tested = [e.key for f in folds for e in f["test"]]
    assert sorted(tested) == sorted(e.key for e in entries), "test parts must partition the records"
    for f in folds:
        owner: dict[str, str] = {}
        for part, es in f.items():
            for e in es:
                assert owner.setdefault(e.patient_id, part) == part, (e.patient_id, part)
        assert len(f["train"]) + len(f["val"]) + len(f["test"]) == len(entries)
        assert 0.1 < len(f["val"]) / (len(f["train"]) + len(f["val"])) < 0.2


def test_patient_folds_stratified_and_deterministic(entries):
    from cpsc2018.splits import patient_folds

    a = patient_folds(entries, k=5, seed=0)
    b = patient_folds(entries, k=5, seed=0)
    assert [[e.key for e in f["test"]] for f in a] == [[e.key for e in f["test"]] for f in b]
    total = np.sum([e.targets("six") for e in entries], axis=0)
    for f in a:
        got = np.sum([e.targets("six") for e in f["test"]], axis=0)
        # Each label's positives spread evenly: every fold within a few records of a fifth.
        assert np.all(np.abs(got - total / 5) <= np.maximum(3, 0.1 * total)), (got, total)


def test_patient_folds_bad_arguments(entries):
    from cpsc2018.splits import patient_folds

    with pytest.raises(ValueError, match="at least 2 folds"):
        patient_folds(entries, k=1)
    with pytest.raises(ValueError, match="cannot fill"):
        patient_folds(entries[:3], k=5)
