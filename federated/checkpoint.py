"""The checkpoint contract (see DESIGN.md): a trained model and everything needed to use it.

A checkpoint is a ``torch.save``d dict with these keys:

* ``format``: "ecg-lite-checkpoint", ``version``: 1
* ``model_name`` and ``model_kwargs`` (``resnet1d.create_model(model_name, **model_kwargs)`` rebuilds it;
  ``num_classes`` and ``in_leads`` are among the kwargs)
* ``state_dict``: the weights
* ``label_set`` ("six" | "cpsc9") and ``labels`` (class names in output order)
* ``preprocess``: ``PreprocessConfig.to_dict()``; the model only ever saw data made this way
* ``thresholds``: per-class probability thresholds tuned on the validation split
* ``features``: names of the hand features a hybrid model takes (empty otherwise)
* ``metrics``: {"val": {...}, "test": {...}} as computed at save time
* ``config``: the resolved training config; ``split``: {"seed", "fractions", "data", "val_ids", "test_ids",
  "data_options", "ptbxl_rates_read"}. ``data_options`` ({"ptbxl_rate": 100|500}) are the scan options
  that change what a record reads as: evaluate, the export gate, calibration and the app read records
  with them. Checkpoints saved before it read as their ``config["ptbxl_rate"]``, else 500 Hz (the
  ``Checkpoint.data_options`` property resolves this; ``export.metadata.DATA_OPTION_DEFAULTS``).
* ``versions``: torch/flwr/python versions; ``progress``: epoch or round reached, and for ``last.pt``
  the optimizer/scheduler/RNG/server-strategy state that ``--resume`` needs.

Saved atomically (temporary file, then rename).
"""

from __future__ import annotations

import io
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cpsc2018.util import atomic_write_bytes

FORMAT = "ecg-lite-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """The file is not a usable ECG-Lite checkpoint; the message says which file and why."""


@dataclass
class Checkpoint:
    model_name: str
    model_kwargs: dict
    state_dict: dict
    label_set: str
    labels: list[str]
    preprocess: dict
    thresholds: list[float]
    features: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    split: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    progress: dict = field(default_factory=dict)
    # Models for any lead subset (issue 21): per standard lead set ("6", "1"...) the decision thresholds
    # tuned on the validation records with the other leads zeroed.
    lead_thresholds: dict = field(default_factory=dict)

    @property
    def data_options(self) -> dict:
        """Scan options the model's records were read with (see the module docstring for old files)."""
        from export.metadata import resolve_data_options  # standard library only

        recorded = self.split.get("data_options")
        if recorded is None and "ptbxl_rate" in self.config:
            recorded = {"ptbxl_rate": self.config["ptbxl_rate"]}
        return resolve_data_options(recorded)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **self.__dict__}

    def build_model(self) -> torch.nn.Module:
        """The network with its weights, in eval mode."""
        from resnet1d import create_model

        try:
            model = create_model(self.model_name, **self.model_kwargs)
        except ValueError as exc:
            raise CheckpointError(f"cannot build model {self.model_name!r} from the checkpoint: {exc}") from None
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            raise CheckpointError(f"weights do not fit model {self.model_name!r}: {exc}") from None
        return model.eval()


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import flwr

        out["flwr"] = flwr.__version__
    except ImportError:
        pass
    return out


def save_checkpoint(path: Path | str, ckpt: Checkpoint) -> None:
    buf = io.BytesIO()
    torch.save(ckpt.to_dict(), buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path | str) -> Checkpoint:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        # weights_only=False: our own files carry plain dicts, lists and numbers besides tensors.
        raw = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an ECG-Lite checkpoint (no '{FORMAT}' format marker)")
    if raw.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {raw.get('version')} is not supported (expected {VERSION})")
    fields_ = {k: v for k, v in raw.items() if k not in ("format", "version")}
    try:
        return Checkpoint(**fields_)
    except TypeError as exc:
        raise CheckpointError(f"{path}: checkpoint fields do not match the contract ({exc})") from None
