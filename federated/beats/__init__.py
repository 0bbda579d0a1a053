"""The heartbeat task (``--task beats``): AAMI EC57 beat classes on MIT-BIH records, inter-patient.

* :mod:`federated.beats.data` - records under a folder -> beats per record, folds of whole patients;
* :mod:`federated.beats.metrics` - per-class sensitivity, positive predictivity, F1, confusion (AAMI);
* :mod:`federated.beats.train` - central, local and cross-validated training (softmax / cross-entropy;
  the loop is ``federated.engine.train_one_epoch``);
* :mod:`federated.beats.evaluate` - ``python -m federated.evaluate`` for beat models;
* :mod:`federated.beats.export` - int8 ONNX through ``export``'s steps and its gate;
* :mod:`federated.beats.flower` - federated training (Flower simulation), clients = groups of patients.
"""

from __future__ import annotations


def run_beats(cfg) -> dict:
    """Entry point of ``python -m federated.train --task beats`` (``cfg``: ``federated.config.TrainConfig``)."""
    from federated.beats.train import run

    return run(cfg)
