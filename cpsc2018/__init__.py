"""ECG-Lite data layer: readers for every source format, the one label table, preprocessing,
catalog, splits by patient and site. Importing it needs no torch (the phone app uses it);
the torch Dataset lives in :mod:`cpsc2018.dataset`."""

from cpsc2018.labels import CPSC9, SIX, label_names
from cpsc2018.preprocess import PreprocessConfig, preprocess, windows
from cpsc2018.records import LEADS, Record, RecordError

__all__ = ["CPSC9", "LEADS", "SIX", "PreprocessConfig", "Record", "RecordError", "label_names", "preprocess", "windows"]
