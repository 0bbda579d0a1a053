"""Every reader on real records, and the label maps of every source."""

from __future__ import annotations

import numpy as np
import pytest

from cpsc2018.labels import code_to_class, codes_to_classes, detect_code_system, label_names, multi_hot
from cpsc2018.readers import read_any, read_cpsc_mat, read_mitbih, read_ptbxl, read_wfdb
from cpsc2018.records import LEADS


def _einthoven(rec) -> None:
    """Lead II = I + III and aVR = -(I + II) / 2 hold for a correctly ordered, correctly scaled record."""
    s = rec.signal.astype(np.float64)
    i, ii, iii, avr = s[0], s[1], s[2], s[3]
    scale = np.abs(ii).max()
    assert np.max(np.abs(ii - (i + iii))) < 0.05 * scale + 0.02
    assert np.max(np.abs(avr + (i + ii) / 2)) < 0.05 * scale + 0.02


def test_wfdb_cpsc_text_labels(data_dir):
    rec = read_wfdb(data_dir / "cpsc2018" / "A0001.hea")
    assert rec.signal.dtype == np.float32 and rec.signal.shape == (12, 7500)
    assert rec.fs == 500 and rec.leads == LEADS
    assert rec.site == "CPSC2018" and rec.code_system == "cpsc_text"
    assert rec.classes == {"RBBB"} and rec.targets() == [0, 0, 0, 1, 0, 0]
    assert 0.1 < np.abs(rec.signal).max() < 20  # mV, not raw ADC units
    _einthoven(rec)


@pytest.mark.parametrize("record,site", [("E00001", "Georgia"), ("HR03961", "PTB-XL"), ("Q0001", "CPSC-Extra"), ("S0001", "PTB")])
def test_wfdb_snomed_sites(data_dir, record, site):
    path = data_dir / "cinc2021" / f"{record}.hea"
    if not path.exists():
        path = next((data_dir / "cinc2021").glob(f"{record[:2] if record.startswith('HR') else record[0]}*.hea"))
    rec = read_wfdb(path)
    assert rec.site == site and rec.code_system == "snomed"
    assert rec.signal.shape[0] == 12 and rec.signal.dtype == np.float32
    _einthoven(rec)


def test_chapman_af_rbbb_snomed(data_dir):
    rec = read_wfdb(data_dir / "cinc2021" / "JS00001.hea")
    assert rec.site == "Chapman/Ningbo"
    assert rec.classes == {"AF", "RBBB"}  # 164889003, 59118001 (+ an unscored code: "other")


def test_original_cpsc_mat_with_reference(data_dir):
    rec = read_cpsc_mat(data_dir / "cpsc2018_original" / "A1980.mat")
    assert rec.signal.shape == (12, 5000) and rec.fs == 500
    assert rec.code_system == "cpsc_number" and rec.classes == {"PAC"}
    assert rec.source_format == "cpsc_mat"
    _einthoven(rec)


@pytest.mark.parametrize("rate,n", [(100, 1000), (500, 5000)])
def test_ptbxl_native_both_rates(data_dir, rate, n):
    rec = read_ptbxl(data_dir / "ptbxl", 1, rate=rate)
    assert rec.signal.shape == (12, n) and rec.fs == rate
    assert rec.patient_id == "ptbxl-15709" and rec.record_id == "ptbxl-00001"
    assert rec.classes == {"Normal"} and rec.code_system == "scp"
    _einthoven(rec)


def test_ptbxl_zero_likelihood_rhythm_codes_count(data_dir):
    import csv

    rows = list(csv.DictReader(open(data_dir / "ptbxl" / "ptbxl_database.csv")))
    row = next(r for r in rows if "'AFIB': 0.0" in r["scp_codes"])
    rec = read_ptbxl(data_dir / "ptbxl", int(row["ecg_id"]), rate=100)
    assert "AF" in rec.classes


def test_mitbih_two_leads_and_beats(data_dir):
    rec = read_mitbih(data_dir / "mitbih" / "100.hea")  # CRLF header opening with a comment line
    assert rec.signal.shape == (2, 650000) and rec.fs == 360
    assert rec.leads == ("MLII", "V5") and rec.site == "MIT-BIH"
    assert rec.beats is not None and len(rec.beats.samples) == len(rec.beats.symbols) > 2000
    assert rec.beats.symbols.count("N") == 2239
    rec114 = read_any(data_dir / "mitbih" / "114.hea")
    assert rec114.leads[0] == "V5"  # record 114 stores V5 first: its own order is kept


def test_read_any_dispatches(data_dir):
    assert read_any(data_dir / "cpsc2018" / "A0002.mat").source_format == "wfdb"
    assert read_any(data_dir / "cpsc2018_original" / "A1981.mat").source_format == "cpsc_mat"
    assert read_any(data_dir / "mitbih" / "101.dat").source_format == "mitbih"


def test_label_maps_every_system():
    for name in label_names("six"):
        for system in ("cpsc_text", "cpsc_number", "snomed", "scp"):
            from cpsc2018.labels import class_def

            for code in class_def(name).codes(system):
                assert code_to_class(code, system) == name
    assert code_to_class("59118001", "snomed") == code_to_class("713427006", "snomed") == "RBBB"
    assert code_to_class("i-avb", "cpsc_text") == "I-AVB"  # case does not matter
    assert code_to_class("99999999", "snomed") is None  # unknown -> other, not an error
    assert codes_to_classes(["426783006", "123"], "snomed") == {"Normal"}
    assert multi_hot({"AF", "PVC", "Normal"}, "six") == [1, 0, 0, 0, 0, 1]
    assert len(label_names("cpsc9")) == 9
    assert detect_code_system(["164889003", "59118001"]) == "snomed"
    assert detect_code_system(["AF", "RBBB"]) == "cpsc_text"
    with pytest.raises(ValueError, match="unknown label set"):
        label_names("seven")
