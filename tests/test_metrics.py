"""Scoring functions against small cases worked by hand."""

import math

import numpy as np
import pytest

from federated.metrics import class_metrics, cpsc2018_score, multilabel_metrics, tune_thresholds


def test_class_metrics_hand_worked():
    # truth 1 1 1 0 0 0 0 0 ; prob >= 0.5 predicts 1 1 0 1 0 0 0 0 -> TP 2, FN 1, FP 1, TN 4
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.4, 0.05])
    m = class_metrics(y, p, 0.5)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # 0.667
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(4 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    # AUROC by pair counting: positives {.9,.8,.3} vs negatives {.7,.2,.1,.4,.05}:
    # .9 and .8 beat all 5; .3 beats .2,.1,.05 -> (5+5+3)/15
    assert m["auroc"] == pytest.approx(13 / 15)


def test_class_without_positives_is_nan_with_reason():
    y = np.array([[0, 1], [0, 0], [0, 1]])
    p = np.array([[0.2, 0.9], [0.1, 0.2], [0.6, 0.7]])
    r = multilabel_metrics(y, p, ["A", "B"], [0.5, 0.5])
    assert math.isnan(r["per_class"]["A"]["f1"]) and math.isnan(r["per_class"]["A"]["auroc"])
    assert "no positive" in r["undefined"]["A"]
    # Macro skips the undefined class instead of counting it as 0.
    assert r["macro"]["f1"] == pytest.approx(1.0)
    assert r["per_class"]["A"]["specificity"] == pytest.approx(2 / 3)


def test_subset_accuracy_and_hamming():
    y = np.array([[1, 0], [0, 1], [1, 1]])
    p = np.array([[0.9, 0.1], [0.6, 0.8], [0.7, 0.2]])  # rows: exact, one wrong, one wrong
    r = multilabel_metrics(y, p, ["A", "B"], [0.5, 0.5])
    assert r["subset_accuracy"] == pytest.approx(1 / 3)
    assert r["hamming_loss"] == pytest.approx(2 / 6)


def test_tune_thresholds_reaches_best_f1():
    y = np.array([[1], [1], [0], [0], [1]])
    p = np.array([[0.4], [0.35], [0.3], [0.1], [0.9]])
    (t,) = tune_thresholds(y, p)
    assert 0.3 < t <= 0.35  # all three positives above, both negatives below: F1 = 1
    assert class_metrics(y[:, 0], p[:, 0], t)["f1"] == pytest.approx(1.0)


def test_cpsc2018_score_hand_worked():
    labels = ["Normal", "AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC", "STD", "STE"]
    y = np.zeros((4, 9), dtype=int)
    y[0, 1] = 1  # AF, predicted AF -> correct
    y[1, 1] = y[1, 4] = 1  # AF + RBBB, predicted RBBB -> correct (among its labels), booked to RBBB
    y[2, 0] = 1  # Normal, predicted AF -> wrong
    y[3, 5] = 1  # PAC, predicted PAC -> correct
    pred = np.array([1, 4, 1, 5])
    s = cpsc2018_score(y, pred, labels)
    # AF: N_AF,AF = 1; row AF sum 1, column AF sum 2 (one from Normal) -> 2*1/(1+2)
    assert s["f1_per_class"]["AF"] == pytest.approx(2 / 3)
    assert s["f1_per_class"]["RBBB"] == pytest.approx(1.0)
    assert s["f1_per_class"]["Normal"] == pytest.approx(0.0)
    assert s["f1_per_class"]["PAC"] == pytest.approx(1.0)
    assert s["Faf"] == pytest.approx(2 / 3)
    assert math.isnan(s["f1_per_class"]["STD"])  # neither truth nor prediction: undefined
    assert s["Fpc"] == pytest.approx(1.0)  # PVC undefined, PAC 1.0
