"""ECG-Lite's console entry point (``ecg-lite``): one name for the tool's commands (:mod:`ecg_lite.cli`)."""
