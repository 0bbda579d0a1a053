"""The official CPSC2018 score (Liu et al. 2018, the challenge's ``score_py3.py``) on cases worked by hand.

Rule: a 9x9 matrix N (rows: reference, columns: prediction). A prediction that is among the record's
labels is booked N[p, p]; otherwise N[first label, p]. F_j = 2 N_jj / (N_j. + N_.j); F1 is the mean
of the nine; Faf = F_AF; Fblock, Fpc and Fst pool their classes' counts: 2 sum N_jj / sum (N_j. + N_.j).
"""

import math

import numpy as np
import pytest

from cpsc2018.labels import CPSC9
from cpsc2018.readers import read_cpsc_mat, read_wfdb
from federated.metrics import cpsc2018_score

LABELS = list(CPSC9)  # Normal AF I-AVB LBBB RBBB PAC PVC STD STE
I = {name: k for k, name in enumerate(LABELS)}


def test_record_without_cpsc9_label_is_not_a_correct_prediction():
    # Record 0: AF, predicted AF. Record 1: no label of the nine, predicted AF (a false alarm).
    y = np.zeros((2, 9), dtype=int)
    y[0, I["AF"]] = 1
    pred = np.array([I["AF"], I["AF"]])
    s = cpsc2018_score(y, pred, LABELS)
    # The unlabelled record is left out (every CPSC2018 record has a label): AF is 1 of 1 -> F 1.0,
    # and the report says one record was excluded. It must never count as a correct AF prediction
    # *on top of* a real one: with the bug, N_AF,AF = 2.
    assert s["records_scored"] == 1 and s["records_excluded"] == 1
    assert s["confusion"][I["AF"]][I["AF"]] == 1


def test_false_alarm_on_unlabelled_record_cannot_give_af_f1_one():
    # Only unlabelled records, all predicted AF: nothing to score, AF F1 undefined (not 1.0).
    y = np.zeros((3, 9), dtype=int)
    pred = np.full(3, I["AF"])
    s = cpsc2018_score(y, pred, LABELS)
    assert math.isnan(s["Faf"])


def test_wrong_prediction_books_against_first_label_in_source_order():
    # A0043-like: labels RBBB then AF (REFERENCE.csv "5,2"), predicted PAC (wrong) -> N[RBBB, PAC].
    # The lowest class index would be AF (1), the first label is RBBB (4).
    refs = [(I["RBBB"], I["AF"]), (I["AF"],)]
    pred = np.array([I["PAC"], I["AF"]])
    s = cpsc2018_score(refs, pred, LABELS)
    assert s["confusion"][I["RBBB"]][I["PAC"]] == 1
    assert s["confusion"][I["AF"]][I["PAC"]] == 0
    # AF: N=1, row 1, column 1 -> 1.0; RBBB: N=0, row 1 -> 0.0; PAC: column 1 -> 0.0
    assert s["f1_per_class"]["AF"] == pytest.approx(1.0)
    assert s["f1_per_class"]["RBBB"] == pytest.approx(0.0)
    assert s["f1_per_class"]["PAC"] == pytest.approx(0.0)


def test_prediction_among_labels_is_correct_for_that_label():
    refs = [(I["RBBB"], I["AF"])]
    s = cpsc2018_score(refs, np.array([I["AF"]]), LABELS)  # the second label: still correct
    assert s["confusion"][I["AF"]][I["AF"]] == 1 and s["f1_per_class"]["AF"] == pytest.approx(1.0)


def test_multi_hot_without_order_is_refused_where_order_decides():
    y = np.zeros((1, 9), dtype=int)
    y[0, I["AF"]] = y[0, I["RBBB"]] = 1
    with pytest.raises(ValueError, match="first label"):
        cpsc2018_score(y, np.array([I["PAC"]]), LABELS)


def test_sub_scores_pool_counts_as_the_challenge_does():
    # I-AVB->I-AVB, LBBB->Normal, RBBB->RBBB, RBBB->RBBB.
    # Per class: I-AVB 2*1/(1+1)=1, LBBB 0/(1+0)=0, RBBB 2*2/(2+2)=1 (their mean would be 2/3).
    # Fblock = 2*(1+0+2)/((1+1)+(1+0)+(2+2)) = 6/7.
    y = np.zeros((4, 9), dtype=int)  # single-label records: a multi-hot array is unambiguous
    for row, name in enumerate(("I-AVB", "LBBB", "RBBB", "RBBB")):
        y[row, I[name]] = 1
    pred = np.array([I["I-AVB"], I["Normal"], I["RBBB"], I["RBBB"]])
    s = cpsc2018_score(y, pred, LABELS)
    assert s["Fblock"] == pytest.approx(6 / 7)
    assert s["f1_per_class"]["LBBB"] == pytest.approx(0.0)
    # Normal: N=0, column 1 -> 0. Defined classes: Normal 0, I-AVB 1, LBBB 0, RBBB 1 -> mean 0.5
    assert s["F1"] == pytest.approx(0.5)
    assert sorted(s["undefined"]) == ["AF", "PAC", "PVC", "STD", "STE"]


def test_readers_keep_the_source_label_order(data_dir):
    # Original layout: REFERENCE.csv rows are First_label, Second_label, Third_label.
    ref = data_dir / "cpsc2018_original" / "REFERENCE.csv"
    rows = {r.split(",")[0]: [c for c in r.strip().split(",")[1:] if c] for r in ref.read_text().splitlines()[1:]}
    mat = sorted((data_dir / "cpsc2018_original").glob("*.mat"))[0]
    rec = read_cpsc_mat(mat)
    assert [LABELS[k] for k in rec.ordered_targets("cpsc9")] == [LABELS[int(c) - 1] for c in rows[mat.stem]]
    # WFDB: the #Dx line's order (A0043 lists AF, RBBB in the PhysioNet/CinC 2020 header).
    rec = read_wfdb(data_dir / "cpsc2018" / "A0043.hea")
    assert rec.ordered_targets("cpsc9") == (I["AF"], I["RBBB"])
