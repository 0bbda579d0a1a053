"""The ONNX metadata contract: everything the app and ``evaluate`` need travels inside the file.

Stored as ``metadata_props`` (string key -> string value; structured values as JSON). Read with
onnxruntime's ``InferenceSession.get_modelmeta().custom_metadata_map`` or onnx's ``metadata_props``.
Imports only the standard library: the phone app reads it.

Data options: the scan options that change what a record reads as (today the PTB-XL sampling rate,
``--ptbxl-rate``) travel inside ``split["data_options"]`` of the checkpoint and of this metadata, so
that ``evaluate``, the export gate, calibration and ``mobile_app.classify --held-out`` read the
held-out records exactly as training did. Files written before the options were recorded read as
:data:`DATA_OPTION_DEFAULTS` (500 Hz: what evaluate and the gate always read then); checkpoints of
that time fall back first to their training config's ``ptbxl_rate``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

FORMAT_VERSION = "1"
INPUT_NAME = "ecg"  # float32 [batch, 12, samples], dynamic batch
FEATURES_INPUT_NAME = "features"  # float32 [batch, n_features], only for hybrid models
OUTPUT_NAME = "probabilities"  # float32 [batch, n_classes], after a sigmoid


# Defaults for files that predate a data option (see the module docstring).
DATA_OPTION_DEFAULTS: dict[str, object] = {"ptbxl_rate": 500}


def resolve_data_options(recorded: Mapping | None) -> dict:
    """The recorded data options over the defaults (unknown keys are kept: a newer writer's)."""
    return {**DATA_OPTION_DEFAULTS, **(dict(recorded) if recorded else {})}


class MetadataError(ValueError):
    """The file lacks the ECG-Lite metadata or holds a malformed value."""


def json_object(text: str, key: str, source: str) -> dict:
    """The JSON object stored under metadata ``key``; :class:`MetadataError` names the file and the key."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        raise MetadataError(f"{source}: metadata key '{key}' is not valid JSON") from None
    if not isinstance(raw, dict):
        raise MetadataError(f"{source}: metadata key '{key}' must be a JSON object, got {type(raw).__name__}")
    return raw


@dataclass(frozen=True)
class ModelMeta:
    model_name: str
    model_kwargs: dict
    labels: list[str]
    label_set: str
    thresholds: list[float]
    preprocess: dict  # cpsc2018.preprocess.PreprocessConfig.to_dict()
    output: str = "probabilities"  # what OUTPUT_NAME holds: "probabilities" (sigmoid applied)
    features: list[str] = field(default_factory=list)  # hybrid models: names of the hand features
    metrics: dict = field(default_factory=dict)  # validation/test metrics of the checkpoint
    split: dict = field(default_factory=dict)  # seed, val/test record ids, data_options (gate, evaluate)
    quantization: dict = field(default_factory=dict)  # {} for fp32; method, calibration for int8
    # The lead sets the file serves (issue 21): cpsc2018.leadsets.LeadSupport JSON, read by the app;
    # "" (older files): the 12 leads only.
    lead_sets: str = ""
    version: str = FORMAT_VERSION

    @property
    def data_options(self) -> dict:
        """How the model's records were read (``split["data_options"]``; defaults for older files)."""
        return resolve_data_options(self.split.get("data_options"))

    def to_props(self) -> dict[str, str]:
        return {
            "ecglite.version": self.version,
            "model_name": self.model_name,
            "model_kwargs": json.dumps(self.model_kwargs, sort_keys=True),
            "labels": json.dumps(self.labels),
            "label_set": self.label_set,
            "thresholds": json.dumps([float(t) for t in self.thresholds]),
            "preprocess": json.dumps(self.preprocess, sort_keys=True),
            "output": self.output,
            "features": json.dumps(self.features),
            "metrics": json.dumps(self.metrics, sort_keys=True),
            "split": json.dumps(self.split, sort_keys=True),
            "quantization": json.dumps(self.quantization, sort_keys=True),
            **({"lead_sets": self.lead_sets} if self.lead_sets else {}),
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> "ModelMeta":
        if "ecglite.version" not in props:
            raise MetadataError(f"{source}: not an ECG-Lite model (no 'ecglite.version' in its metadata)")

        def get(key: str, parse_json: bool = True, default: object = None):
            if key not in props:
                if default is not None:
                    return default
                raise MetadataError(f"{source}: metadata key '{key}' is missing")
            try:
                return json.loads(props[key]) if parse_json else props[key]
            except json.JSONDecodeError:
                raise MetadataError(f"{source}: metadata key '{key}' is not valid JSON") from None

        meta = cls(
            model_name=get("model_name", False),
            model_kwargs=get("model_kwargs"),
            labels=list(get("labels")),
            label_set=get("label_set", False),
            thresholds=[float(t) for t in get("thresholds")],
            preprocess=get("preprocess"),
            output=get("output", False, "probabilities"),
            features=list(get("features", True, [])),
            metrics=get("metrics", True, {}),
            split=get("split", True, {}),
            quantization=get("quantization", True, {}),
            lead_sets=str(props.get("lead_sets", "")),
            version=props["ecglite.version"],
        )
        if len(meta.thresholds) != len(meta.labels):
            raise MetadataError(f"{source}: {len(meta.thresholds)} thresholds for {len(meta.labels)} labels")
        return meta


def read_onnx_metadata(path: str) -> ModelMeta:
    """Metadata of an ONNX file through onnxruntime (what the app and evaluate use)."""
    import onnxruntime as ort  # local: keep this module importable without onnxruntime

    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise MetadataError(f"{path}: not a loadable ONNX model ({type(exc).__name__}: {exc})") from None
    return ModelMeta.from_props(sess.get_modelmeta().custom_metadata_map, source=str(path))
