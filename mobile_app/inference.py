"""On-device inference: read a recording, preprocess it exactly as in training, run the int8 ONNX model.

No Kivy and no torch here (numpy, scipy, the project's readers and preprocessing, and an ONNX runtime),
so this runs, and is tested, anywhere. Everything model-specific (labels, thresholds, preprocessing)
comes from the ONNX file's metadata. Two backends share one interface: onnxruntime's Python package
on desktops, and on Android the onnxruntime-android Java API through pyjnius.

Fused pipeline (issue 15, item 5; written by ``python -m export.pipeline``): when the network's metadata
has a ``pipeline`` key (:class:`PipelineSpec`, JSON), the app also loads the feature model it names, a
sibling ONNX file (input ``features`` float32 [batch, n_features], output ``probabilities`` float32
[batch, n_classes]), computes :func:`cpsc2018.features.expert_features` (numpy engine) on the record as
read (mV, the record's own sampling rate), and returns ``w * p_network + (1 - w) * p_features`` with
the pipeline's own thresholds. Without that key the app runs the network alone, as before.

Calibration (issue 20): when the network's metadata has a ``calibration`` key
(:class:`export.calibration.Calibration`), the probabilities reported are passed through its per-class
monotone maps (fitted on validation records at export). Decisions stay those of the uncalibrated
probability against the tuned thresholds; the thresholds reported are mapped through the same
functions, so that a bar and its tick stay comparable.

Signal quality (issue 20): :meth:`Classifier.classify` runs :func:`cpsc2018.quality.assess` on the
record as read; the :class:`Result` carries the verdict, and ``withheld`` is true for an unusable
recording (the app then shows why instead of probabilities; the probabilities are still computed, for
the JSON and research tables that ask for them).

Lead sets (issue 21): the network file's ``lead_sets`` key (:class:`cpsc2018.leadsets.LeadSupport`) says
which lead sets it serves, with which network file (itself or a sibling ONNX file), thresholds and
calibration; a file without it serves the 12 leads only. A record's usable leads are those it has
(or those ``leads=`` names), minus the leads the quality check finds dead (missing or flat; a noisy or
clipped lead stays in): a 12-lead record with dead leads is routed to the largest supported set its
other leads contain instead of being refused (a model that serves only the 12 leads classifies it with
the dead leads in, as before). The full 12 leads run the fused pipeline as before; a reduced
set runs its network alone on the preprocessed record with the absent leads zeroed. A record whose
usable leads contain no supported set gets a :class:`ClassifyError` naming its leads.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from collections.abc import Sequence

import numpy as np

from cpsc2018.features import EXPERT_NAMES, expert_features
from cpsc2018.leadsets import LEAD_SETS_KEY, LeadSetError, LeadSupport, expand, ordered, zero_absent
from cpsc2018.quality import Quality, QualityThresholds, assess
from cpsc2018.preprocess import EVAL_MAX_WINDOWS, PreprocessConfig, bandpass, notch, preprocess, resample, windows
from cpsc2018.readers import read_any
from cpsc2018.records import LEADS, Record, RecordError, canonical_lead
from export.calibration import CALIBRATION_KEY, Calibration
from export.metadata import FEATURES_INPUT_NAME, INPUT_NAME, MetadataError, ModelMeta, json_object

DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "model.int8.onnx"
DISPLAY_FS = 100.0  # what the screen draws: 1 point per pixel at 100 px/s (25 mm/s paper speed)


class ClassifyError(Exception):
    """Anything the user should read instead of a crash: bad file, wrong leads, too short, no model."""


# --- the fused pipeline's contract (the writer is export.pipeline; this module is its reader) ---------
PIPELINE_KEY = "pipeline"  # metadata key of the network file; its value is PipelineSpec JSON
PIPELINE_VERSION = 1
COMBINE = "weighted mean of probabilities"  # p = w * p_network + (1 - w) * p_features
APP_FEATURE_ENGINES = ("numpy",)  # what the phone can compute (no neurokit2 on the app path)
FEATURE_MODEL_MARKER = "ecglite.feature_model"  # metadata key that marks a feature-model file
FEATURE_MODEL_INPUT = "features"  # float32 [batch, n_features], NaN where a feature was not measurable
FEATURE_MODEL_OUTPUT = "probabilities"  # float32 [batch, n_classes], positive-class probabilities


@dataclass(frozen=True)
class PipelineSpec:
    """How the network and the feature model combine (the ``pipeline`` metadata of the network file).

    ``feature_model`` is a file name beside the network file (no folder part); ``thresholds`` are the
    fused probabilities' decision thresholds (tuned on validation records), one per label.
    """

    feature_model: str
    feature_engine: str
    feature_names: list[str]
    network_weight: float
    thresholds: list[float]
    combine: str = COMBINE
    version: int = PIPELINE_VERSION

    def to_json(self) -> str:
        return json.dumps({
            "version": self.version, "feature_model": self.feature_model, "feature_engine": self.feature_engine,
            "feature_names": list(self.feature_names), "network_weight": float(self.network_weight),
            "combine": self.combine, "thresholds": [float(t) for t in self.thresholds],
        })

    @classmethod
    def from_json(cls, text: str, source: str = "model") -> "PipelineSpec":
        """Parse and check the ``pipeline`` value; :class:`MetadataError` says what is wrong."""
        raw = json_object(text, PIPELINE_KEY, source)
        missing = [k for k in ("version", "feature_model", "feature_engine", "feature_names", "network_weight", "combine", "thresholds") if k not in raw]
        if missing:
            raise MetadataError(f"{source}: pipeline metadata lacks {', '.join(missing)}")
        if raw["version"] != PIPELINE_VERSION:
            raise MetadataError(f"{source}: pipeline version {raw['version']!r} is not supported (this app reads {PIPELINE_VERSION})")
        if raw["combine"] != COMBINE:
            raise MetadataError(f"{source}: pipeline combines by {raw['combine']!r}; this app knows only {COMBINE!r}")
        name = raw["feature_model"]
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            raise MetadataError(f"{source}: pipeline feature_model must be a file name beside the model, got {name!r}")
        try:
            w = float(raw["network_weight"])
            thresholds = [float(t) for t in raw["thresholds"]]
            names = [str(n) for n in raw["feature_names"]]
        except (TypeError, ValueError):
            raise MetadataError(f"{source}: pipeline network_weight, thresholds or feature_names malformed") from None
        if not 0.0 <= w <= 1.0:
            raise MetadataError(f"{source}: pipeline network_weight must lie in [0, 1], got {w}")
        return cls(name, str(raw["feature_engine"]), names, w, thresholds, raw["combine"], raw["version"])


def fuse(p_network: np.ndarray, p_features: np.ndarray, weight: float) -> np.ndarray:
    """``weight * p_network + (1 - weight) * p_features`` (:data:`COMBINE`), same shapes, weight in [0, 1]."""
    a, b = np.asarray(p_network, dtype=np.float64), np.asarray(p_features, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"network and feature probabilities differ in shape: {a.shape} vs {b.shape}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"network weight must lie in [0, 1], got {weight}")
    return weight * a + (1.0 - weight) * b


class Backend(Protocol):
    def metadata(self) -> dict[str, str]: ...

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


class OrtBackend:
    """onnxruntime's Python package (desktop, CI)."""

    name = "onnxruntime (Python)"

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # a phone-like single core; also the steadiest timing
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ClassifyError(f"{path}: not a loadable ONNX model ({type(exc).__name__})") from None

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, inputs)[0]


def to_java_buffer(x: np.ndarray) -> tuple[list[float], list[int]]:
    """A C-ordered float32 array as the flat values and long[] shape that OnnxTensor.createTensor takes."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x.ravel().tolist(), [int(d) for d in x.shape]


def from_java_output(values: list[float] | np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The flat float[] a Java session returns, back into a numpy array of ``shape``."""
    arr = np.asarray(values, dtype=np.float32)
    if arr.size != int(np.prod(shape)):
        raise ClassifyError(f"model output has {arr.size} values, expected {shape}")
    return arr.reshape(shape)


class AndroidOrtBackend:
    """onnxruntime-android (Gradle dependency in buildozer.spec) through pyjnius: on the phone only."""

    name = "onnxruntime-android (Java)"

    def __init__(self, path: Path) -> None:
        from jnius import autoclass  # available inside the APK built by buildozer

        self._env_cls = autoclass("ai.onnxruntime.OrtEnvironment")
        self._tensor_cls = autoclass("ai.onnxruntime.OnnxTensor")
        self._float_buffer = autoclass("java.nio.FloatBuffer")
        self.env = self._env_cls.getEnvironment()
        self.session = self.env.createSession(str(path), autoclass("ai.onnxruntime.OrtSession$SessionOptions")())

    def metadata(self) -> dict[str, str]:
        meta = self.session.getMetadata().getCustomMetadata()
        return {str(k): str(meta.get(k)) for k in meta.keySet().toArray()}

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        hashmap = autoclass_hashmap()
        tensors = []
        for name, arr in inputs.items():
            values, shape = to_java_buffer(arr)
            t = self._tensor_cls.createTensor(self.env, self._float_buffer.wrap(values), shape)
            tensors.append(t)
            hashmap.put(name, t)
        result = self.session.run(hashmap)
        try:
            out = result.get(0).getValue()  # float[batch][classes]
            rows = [list(r) for r in out]
            return np.asarray(rows, dtype=np.float32)
        finally:
            result.close()
            for t in tensors:
                t.close()


def autoclass_hashmap():
    from jnius import autoclass

    return autoclass("java.util.HashMap")()


def on_android(environ: dict[str, str] | None = None) -> bool:
    """python-for-android sets ANDROID_ARGUMENT (and ANDROID_PRIVATE) for the app process."""
    env = os.environ if environ is None else environ
    return "ANDROID_ARGUMENT" in env or "ANDROID_PRIVATE" in env


def make_backend(path: Path, environ: dict[str, str] | None = None) -> Backend:
    if not Path(path).exists():
        raise ClassifyError(
            f"no model at {path}: build one with 'make model' (README) or pass --model FILE"
        )
    return AndroidOrtBackend(path) if on_android(environ) else OrtBackend(path)


@dataclass
class Prediction:
    """One record's probabilities and what produced them.

    ``inference_ms`` is the model work: the network run, plus (pipeline) computing the features, the
    feature model's run and the fusion; reading and preprocessing are in ``timings_ms`` only.
    ``probabilities`` and ``thresholds`` are calibrated where the model carries a calibration;
    ``uncalibrated`` and ``decision_thresholds`` are what the decisions compare (``positive``).
    """

    probabilities: np.ndarray  # (n_classes,): the fused ones for a pipeline, else the network's (calibrated)
    thresholds: list[float]  # the decision thresholds as shown beside the probabilities (calibrated)
    network: np.ndarray  # (n_classes,) the network's record probabilities (max over windows)
    features: np.ndarray | None  # (n_classes,) the feature model's, None without a pipeline
    parts: tuple[str, ...]  # ("network",) or ("network", "features")
    network_weight: float | None  # w of the fusion, None without a pipeline
    timings_ms: dict[str, float]
    uncalibrated: np.ndarray | None = None  # before calibration (None: same as probabilities)
    decision_thresholds: list[float] | None = None  # thresholds on ``uncalibrated`` (None: ``thresholds``)
    lead_set: str = "12"  # the supported set whose network and thresholds ran
    leads_used: tuple[str, ...] = LEADS  # the leads fed to the network (the others were zeroed)
    calibrated: bool = False

    @property
    def positive(self) -> np.ndarray:
        """Per class: the decision (uncalibrated probability >= its tuned threshold)."""
        p = self.probabilities if self.uncalibrated is None else self.uncalibrated
        t = self.thresholds if self.decision_thresholds is None else self.decision_thresholds
        return np.asarray(p) >= np.asarray(t)

    @property
    def inference_ms(self) -> float:
        return sum(v for k, v in self.timings_ms.items() if k != "preprocess")


@dataclass
class Result:
    record: str
    site: str
    fs: float
    duration_s: float
    labels: list[str]
    probabilities: list[float]
    thresholds: list[float]
    positives: list[str]
    inference_ms: float
    model: str
    display: np.ndarray = field(repr=False)  # (12, n) band-passed mV at DISPLAY_FS, for the screen
    reference: list[str] = field(default_factory=list)  # the file's own labels, where it has any
    parts: list[str] = field(default_factory=lambda: ["network"])  # which models ran
    network_probabilities: list[float] = field(default_factory=list)
    feature_probabilities: list[float] | None = None  # the feature model's, pipeline only
    network_weight: float | None = None  # pipeline only
    quality: Quality | None = None  # the signal quality check (None when not run)
    calibrated: bool = False  # probabilities and thresholds went through the model's calibration
    uncalibrated_probabilities: list[float] = field(default_factory=list)
    source_path: str = ""  # the file read
    record_leads: list[str] = field(default_factory=lambda: list(LEADS))  # the leads the file has
    lead_set: str = "12"  # the supported lead set that classified it (its network and thresholds)
    leads_used: list[str] = field(default_factory=lambda: list(LEADS))  # fed to the network
    dropped_leads: list[str] = field(default_factory=list)  # present but dead (missing, flat): left out (routing)

    @property
    def rerouted(self) -> bool:
        """Dead leads were left out and the record classified on the rest (a reduced lead set)."""
        return bool(self.dropped_leads)

    @property
    def withheld(self) -> bool:
        """An unusable recording: show why, not probabilities. A record unusable only for its unreadable
        leads is not withheld when its dead leads were left out and the rest classified (:attr:`rerouted`),
        unless more than the allowed number of noisy or clipped leads remain."""
        if self.quality is None or self.quality.usable:
            return False
        only_leads = not (set(self.quality.record_flags) & {"few_beats", "too_short"})
        still_bad = len(set(self.quality.bad_leads) - set(self.dropped_leads))
        return not (self.rerouted and only_leads and still_bad <= QualityThresholds().max_bad_leads)

    @property
    def lead_note(self) -> str:
        """One line for the screen when fewer than 12 leads were used, else ""."""
        if self.lead_set == "12" and not self.dropped_leads:
            return ""
        text = f"Classified on {len(self.leads_used)} lead(s): {', '.join(self.leads_used)} (lead set {self.lead_set})"
        if self.dropped_leads:
            text += f"; left out, missing or flat: {', '.join(self.dropped_leads)}"
        return text

    @property
    def ranked(self) -> list[tuple[str, float]]:
        return sorted(zip(self.labels, self.probabilities), key=lambda t: -t[1])

    @property
    def top(self) -> str:
        return self.ranked[0][0]

    def to_json(self) -> dict:
        return {
            "record": self.record, "site": self.site, "fs": self.fs, "duration_s": round(self.duration_s, 2),
            "labels": self.labels, "probabilities": [round(p, 6) for p in self.probabilities],
            "thresholds": self.thresholds, "positives": self.positives, "top": self.top,
            "inference_ms": round(self.inference_ms, 3), "model": self.model, "reference": self.reference,
            "parts": self.parts, "network_probabilities": [round(p, 6) for p in self.network_probabilities],
            "feature_probabilities": None if self.feature_probabilities is None else [round(p, 6) for p in self.feature_probabilities],
            "network_weight": self.network_weight,
            "calibrated": self.calibrated,
            "uncalibrated_probabilities": [round(p, 6) for p in self.uncalibrated_probabilities],
            "quality": None if self.quality is None else self.quality.to_json(),
            "withheld": self.withheld,
            "record_leads": self.record_leads, "lead_set": self.lead_set, "leads_used": self.leads_used,
            "dropped_leads": self.dropped_leads,
        }


class Classifier:
    """The model and what its metadata says; ``classify(path)`` does the rest."""

    def __init__(self, model_path: Path | str = DEFAULT_MODEL, environ: dict[str, str] | None = None,
                 backend: Backend | None = None) -> None:
        """``backend``: a ready backend for ``model_path`` (e.g. a desktop checkpoint's, see
        ``mobile_app.classify``); by default the ONNX runtime of this platform."""
        self.path = Path(model_path)
        self.backend = backend if backend is not None else make_backend(self.path, environ)
        props = self.backend.metadata()
        try:
            self.meta = ModelMeta.from_props(props, source=str(self.path))
            self.pre = PreprocessConfig.from_dict(self.meta.preprocess)
        except (MetadataError, ValueError) as exc:
            raise ClassifyError(str(exc)) from None
        self.pipeline: PipelineSpec | None = None
        self.feature_backend: Backend | None = None
        self.feature_path: Path | None = None
        if PIPELINE_KEY in props:
            self._load_pipeline(props[PIPELINE_KEY], environ)
        self.calibration: Calibration | None = None
        if CALIBRATION_KEY in props:
            try:
                cal = Calibration.from_json(props[CALIBRATION_KEY], source=str(self.path))
            except MetadataError as exc:
                raise ClassifyError(str(exc)) from None
            if cal.labels != list(self.meta.labels):
                raise ClassifyError(f"{self.path}: calibration labels {cal.labels} differ from the model's {self.meta.labels}")
            self.calibration = cal
        self._load_lead_sets(props, environ)

    def _load_lead_sets(self, props: dict[str, str], environ: dict[str, str] | None) -> None:
        """The lead sets this file serves (``lead_sets`` metadata), with the sibling networks and per-set
        calibrations they name; every problem is a ClassifyError naming the file."""
        try:
            support = (LeadSupport.from_json(props[LEAD_SETS_KEY], str(self.path), len(self.meta.labels))
                       if LEAD_SETS_KEY in props else LeadSupport.twelve_only())
        except LeadSetError as exc:
            raise ClassifyError(str(exc)) from None
        self.lead_support = support
        self.lead_backends: dict[str, Backend] = {"": self.backend}
        self.lead_calibrations: dict[str, Calibration | None] = {}
        for name, entry in support.sets.items():
            if entry.model and entry.model not in self.lead_backends:
                path = self.path.parent / entry.model
                if not path.is_file():
                    raise ClassifyError(
                        f"{path}: network for lead set {name} missing; {self.path.name} needs '{entry.model}' beside it "
                        "(copy every file of the export.pipeline output folder)"
                    )
                backend = make_backend(path, environ)
                try:
                    meta = ModelMeta.from_props(backend.metadata(), source=str(path))
                except MetadataError as exc:
                    raise ClassifyError(str(exc)) from None
                if list(meta.labels) != list(self.meta.labels) or PreprocessConfig.from_dict(meta.preprocess) != self.pre:
                    raise ClassifyError(f"{path}: labels or preprocessing differ from {self.path.name}'s; they cannot serve one app")
                self.lead_backends[entry.model] = backend
            cal = None
            if entry.calibration is not None:
                try:
                    cal = Calibration.from_json(json.dumps(entry.calibration), source=f"{self.path} (lead set {name})")
                except MetadataError as exc:
                    raise ClassifyError(str(exc)) from None
            self.lead_calibrations[name] = cal

    def _load_pipeline(self, text: str, environ: dict[str, str] | None) -> None:
        """Check the pipeline metadata and load its feature model; every problem is a ClassifyError naming the file."""
        try:
            spec = PipelineSpec.from_json(text, source=str(self.path))
        except MetadataError as exc:
            raise ClassifyError(str(exc)) from None
        if len(spec.thresholds) != len(self.meta.labels):
            raise ClassifyError(f"{self.path}: the pipeline has {len(spec.thresholds)} thresholds for {len(self.meta.labels)} labels")
        if spec.feature_engine not in APP_FEATURE_ENGINES:
            raise ClassifyError(
                f"{self.path}: the pipeline's features come from engine {spec.feature_engine!r}; the app computes only {APP_FEATURE_ENGINES}"
            )
        path = self.path.parent / spec.feature_model
        if not path.is_file():
            raise ClassifyError(
                f"{path}: feature model missing; {self.path.name} is a fused pipeline and needs its feature model "
                f"'{spec.feature_model}' beside it (copy both files from the export.pipeline output folder)"
            )
        backend = make_backend(path, environ)
        props = backend.metadata()
        if FEATURE_MODEL_MARKER not in props:
            raise ClassifyError(f"{path}: not an ECG-Lite feature model (no '{FEATURE_MODEL_MARKER}' in its metadata)")
        try:
            names = [str(n) for n in json.loads(props.get("feature_names", "null"))]
            labels = [str(n) for n in json.loads(props.get("labels", "null"))]
        except (TypeError, ValueError):
            raise ClassifyError(f"{path}: metadata 'feature_names' or 'labels' missing or not a JSON list") from None
        if names != list(spec.feature_names):
            diff = next((i for i, (a, b) in enumerate(zip(names, spec.feature_names)) if a != b), min(len(names), len(spec.feature_names)))
            raise ClassifyError(
                f"{path}: its {len(names)} feature names do not match the {len(spec.feature_names)} of the pipeline in "
                f"{self.path.name} (first difference at position {diff}: "
                f"{names[diff] if diff < len(names) else 'none'!r} vs {spec.feature_names[diff] if diff < len(spec.feature_names) else 'none'!r})"
            )
        if labels != list(self.meta.labels):
            raise ClassifyError(f"{path}: labels {labels} differ from the network's {self.meta.labels} ({self.path.name})")
        unknown = [n for n in names if n not in EXPERT_NAMES]
        if unknown:
            raise ClassifyError(
                f"{path}: needs features this version of the app does not compute: {', '.join(unknown)} "
                "(export the pipeline again with this version's features)"
            )
        self.pipeline, self.feature_backend, self.feature_path = spec, backend, path

    @property
    def parts(self) -> tuple[str, ...]:
        return ("network",) if self.pipeline is None else ("network", "features")

    @property
    def decision_thresholds(self) -> list[float]:
        """The tuned decision thresholds on the uncalibrated probabilities (the pipeline's for a fused model)."""
        return list(self.meta.thresholds if self.pipeline is None else self.pipeline.thresholds)

    @property
    def thresholds(self) -> list[float]:
        """The decision thresholds as reported beside the probabilities (through the calibration, if any)."""
        t = self.decision_thresholds
        return t if self.calibration is None else [float(v) for v in self.calibration.apply(np.array(t))]

    def finalize(self, p: np.ndarray) -> np.ndarray:
        """What the app reports from the (fused) probabilities ``p``: calibrated where the model says how."""
        return np.asarray(p, dtype=np.float64) if self.calibration is None else self.calibration.apply(p)

    @property
    def description(self) -> str:
        q = self.meta.quantization
        kind = f"int8 ({q.get('format', 'QDQ')})" if q else "fp32"
        text = f"{self.meta.model_name} · {kind}"
        if self.pipeline is not None:
            text += f" + feature model (w {self.pipeline.network_weight:g})"
        if self.calibration is not None:
            text += " · calibrated"
        return text

    def feature_row(self, signal: np.ndarray, fs: float) -> np.ndarray:
        """The pipeline's feature vector ``(1, n_features)`` float32 of a record in mV at ``fs`` Hz (NaN where
        not measurable), in the order the feature model was trained on."""
        if self.pipeline is None:
            raise ClassifyError(f"{self.path.name} is not a pipeline: it has no feature model")
        f = expert_features(signal, fs, engine=self.pipeline.feature_engine)
        return np.array([[f.get(n, math.nan) for n in self.pipeline.feature_names]], dtype=np.float32)

    def model_windows(self, signal: np.ndarray, fs: float) -> np.ndarray:
        """The network's input of a record: preprocessed, evenly spaced windows ``(n, 12, samples)``."""
        try:
            x = preprocess(signal, fs, self.pre)
        except ValueError as exc:  # SignalTooShort and friends
            raise ClassifyError(str(exc)) from None
        return windows(x, self.pre, max_windows=EVAL_MAX_WINDOWS)

    def window_probabilities(self, w: np.ndarray) -> np.ndarray:
        """The network's per-window probabilities ``(n, n_classes)`` of model windows ``w`` (hand
        features, for a hybrid network, computed from each window as given)."""
        feed = {INPUT_NAME: np.ascontiguousarray(w, dtype=np.float32)}
        if self.meta.features:
            from cpsc2018.features import window_features

            feed[FEATURES_INPUT_NAME] = np.stack([window_features(v, self.pre.fs) for v in w]).astype(np.float32)
        out = np.asarray(self.backend.run(feed))
        return out if self.meta.output == "probabilities" else 1 / (1 + np.exp(-out))

    def predict(self, signal: np.ndarray, fs: float) -> Prediction:
        """Record probabilities of a 12-lead record ``(12, T)`` in mV at ``fs`` Hz, as the app computes them.

        The network's are the max over windows (as in training evaluation); for a pipeline the feature
        model runs on :func:`expert_features` of the same record and the two are fused (:func:`fuse`);
        the model's calibration, if any, is applied last (:meth:`finalize`).
        """
        t0 = time.perf_counter()
        w = self.model_windows(signal, fs)
        t1 = time.perf_counter()
        probs = self.window_probabilities(w)
        t2 = time.perf_counter()
        p_net = probs.max(axis=0)
        timings = {"preprocess": (t1 - t0) * 1e3, "network": (t2 - t1) * 1e3}
        if self.pipeline is None or self.feature_backend is None:
            final = self.finalize(p_net)
            timings["calibration"] = (time.perf_counter() - t2) * 1e3
            return Prediction(final, self.thresholds, p_net, None, self.parts, None, timings, p_net, self.decision_thresholds,
                              calibrated=self.calibration is not None)
        row = self.feature_row(signal, fs)
        t3 = time.perf_counter()
        p_feat = np.asarray(self.feature_backend.run({FEATURE_MODEL_INPUT: row}))[0]
        t4 = time.perf_counter()
        if p_feat.shape != p_net.shape:
            raise ClassifyError(f"{self.feature_path}: feature model gave {p_feat.shape[0]} probabilities for {p_net.shape[0]} labels")
        fused = fuse(p_net, p_feat, self.pipeline.network_weight)
        final = self.finalize(fused)
        t5 = time.perf_counter()
        timings.update(features=(t3 - t2) * 1e3, feature_model=(t4 - t3) * 1e3, fusion=(t5 - t4) * 1e3)
        return Prediction(final, self.thresholds, p_net, p_feat, self.parts, self.pipeline.network_weight, timings,
                          fused, self.decision_thresholds, calibrated=self.calibration is not None)

    def predict_leads(self, signal: np.ndarray, fs: float, leads: tuple[str, ...], name: str, fed: tuple[str, ...]) -> Prediction:
        """Record probabilities from a reduced lead set: ``signal`` ``(len(leads), T)`` mV with rows named
        ``leads``; the network of lead set ``name`` is fed the ``fed`` leads, the others zeroed. Network
        alone (the feature model was trained on 12-lead records), the set's thresholds and calibration."""
        entry = self.lead_support.sets[name]
        t0 = time.perf_counter()
        try:
            x = preprocess(signal, fs, self.pre)
        except ValueError as exc:
            raise ClassifyError(str(exc)) from None
        x = zero_absent(expand(x, leads), fed)
        w = windows(x, self.pre, max_windows=EVAL_MAX_WINDOWS)
        t1 = time.perf_counter()
        out = np.asarray(self.lead_backends[entry.model].run({INPUT_NAME: np.ascontiguousarray(w, dtype=np.float32)}))
        probs = out if self.meta.output == "probabilities" else 1 / (1 + np.exp(-out))
        p_net = probs.max(axis=0)
        t2 = time.perf_counter()
        decision = list(entry.thresholds) if entry.thresholds is not None else list(self.meta.thresholds)
        cal = self.lead_calibrations.get(name)
        final = np.asarray(p_net, dtype=np.float64) if cal is None else cal.apply(p_net)
        shown = decision if cal is None else [float(v) for v in cal.apply(np.array(decision))]
        timings = {"preprocess": (t1 - t0) * 1e3, "network": (t2 - t1) * 1e3}
        return Prediction(final, shown, p_net, None, ("network",), None, timings, p_net, decision,
                          lead_set=name, leads_used=fed, calibrated=cal is not None)

    def route(self, rec: Record, leads: Sequence[str] | None, bad: Sequence[str]) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        """(lead set name, leads fed, leads dropped) for a record, or a ClassifyError naming its leads. ``bad``:
        the leads the quality check found dead (missing or flat), left out."""
        name_of_file = Path(rec.path).name
        have = ordered(canonical_lead(n) for n in rec.leads)
        present = have
        if leads is not None:
            lacking = [lead for lead in leads if lead not in have]
            if lacking:
                raise ClassifyError(
                    f"{name_of_file} has lead(s) {', '.join(rec.leads)}; the leads asked for include {', '.join(lacking)}, which it lacks"
                )
            present = ordered(leads)
        dropped = tuple(lead for lead in present if lead in set(bad))
        usable = tuple(lead for lead in present if lead not in set(bad))
        name = self.lead_support.choose(usable)
        if name is None and dropped and self.lead_support.choose(present) is not None:
            # No set without the dead leads (a 12-lead-only model): classify with them, as before issue 21.
            dropped, usable = (), present
            name = self.lead_support.choose(present)
        if name is None:
            extra = []
            if dropped:
                extra.append(f"{', '.join(dropped)} missing or flat")
            if leads is None and usable != ordered(canonical_lead(n) for n in rec.leads):
                extra.append(f"usable standard leads: {', '.join(usable) or 'none'}")
            what = f"the leads asked for ({', '.join(present)})" if leads is not None else f"its leads ({', '.join(rec.leads) or 'none'})"
            raise ClassifyError(
                f"{name_of_file}: no model here supports {what}"
                + (f" ({'; '.join(extra)})" if extra else "") + f". Supported lead sets: {self.lead_support.describe()}"
            )
        return name, self.lead_support.fed_leads(name, usable), dropped

    def probabilities(self, signal: np.ndarray, fs: float) -> tuple[np.ndarray, float]:
        """Record probabilities (fused for a pipeline) and inference time in ms (see :class:`Prediction`)."""
        p = self.predict(signal, fs)
        return p.probabilities, p.inference_ms

    def classify(self, record_path: Path | str, *, display: bool = True, quality: bool = True,
                 leads: Sequence[str] | None = None) -> Result:
        """Read, check, classify one file. ``display=False`` skips the screen's copy of the signal (tables);
        ``quality=False`` skips the signal-quality check; ``leads`` uses only these of the record's leads."""
        try:
            rec = read_any(record_path)
        except RecordError as exc:
            raise ClassifyError(f"cannot read {Path(exc.path).name}: {exc.problem}") from None
        return self.classify_record(rec, display=display, quality=quality, leads=leads)

    def classify_record(self, rec: Record, *, display: bool = True, quality: bool = True,
                        leads: Sequence[str] | None = None) -> Result:
        """:meth:`classify` of a record already read (module docstring: how its leads are routed)."""
        q = assess(rec.signal, rec.fs, leads=tuple(rec.leads)) if quality else None
        name, fed, dropped = self.route(rec, leads, q.dead_leads if q is not None else ())
        if len(fed) == len(LEADS) and tuple(rec.leads) == LEADS and self.lead_support.sets[name].model == "":
            pred = self.predict(rec.signal, rec.fs)
        else:
            rows, names = standard_rows(rec)
            pred = self.predict_leads(rec.signal[rows], rec.fs, names, name, fed)
        labels = list(self.meta.labels)
        positives = [n for n, pos in zip(labels, pred.positive) if pos]
        return Result(
            record=rec.record_id, site=rec.site, fs=rec.fs, duration_s=rec.duration_s, labels=labels,
            probabilities=[float(p) for p in pred.probabilities], thresholds=list(pred.thresholds), positives=positives,
            inference_ms=pred.inference_ms, model=self.description,
            display=display_leads(rec, self.pre) if display else np.zeros((12, 0), dtype=np.float32),
            reference=[n for n in labels if n in rec.classes], parts=list(pred.parts),
            network_probabilities=[float(p) for p in pred.network],
            feature_probabilities=None if pred.features is None else [float(p) for p in pred.features],
            network_weight=pred.network_weight, quality=q, calibrated=pred.calibrated,
            uncalibrated_probabilities=[float(p) for p in (pred.uncalibrated if pred.uncalibrated is not None else pred.probabilities)],
            source_path=str(rec.path), record_leads=list(rec.leads), lead_set=pred.lead_set,
            leads_used=list(pred.leads_used), dropped_leads=list(dropped),
        )


def display_leads(rec: Record, pre: PreprocessConfig) -> np.ndarray:
    """The screen's 12 rows of a record: its standard leads in place, zero rows for the ones it lacks."""
    rows, names = standard_rows(rec)
    shown = display_signal(rec.signal[rows], rec.fs, pre)
    return shown if names == LEADS else expand(shown, names)


def standard_rows(rec: Record) -> tuple[list[int], tuple[str, ...]]:
    """The rows of a record that hold standard leads, and those leads' names (MIT-BIH's MLII is not one)."""
    rows = [i for i, n in enumerate(rec.leads) if canonical_lead(n) in LEADS]
    return rows, tuple(canonical_lead(rec.leads[i]) for i in rows)


def display_signal(signal: np.ndarray, fs: float, pre: PreprocessConfig) -> np.ndarray:
    """What the screen draws: the same band-pass and notch as the model input, in mV (not z-scored)."""
    x = np.nan_to_num(np.asarray(signal, dtype=np.float64))
    x = notch(bandpass(x, fs, pre.band_low_hz, pre.band_high_hz, pre.filter_order), fs, pre.notch_hz)
    return resample(x, fs, DISPLAY_FS).astype(np.float32)
