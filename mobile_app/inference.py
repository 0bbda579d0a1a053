"""On-device inference: read a recording, preprocess it exactly as in training, run the int8 ONNX model.

No Kivy and no torch here (numpy, scipy, the project's readers and preprocessing, and an ONNX runtime),
so this runs, and is tested, anywhere. Everything model-specific (labels, thresholds, preprocessing)
comes from the ONNX file's metadata. Two backends share one interface: onnxruntime's Python package
on desktops, and on Android the onnxruntime-android Java API through pyjnius.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from cpsc2018.preprocess import EVAL_MAX_WINDOWS, PreprocessConfig, bandpass, notch, preprocess, resample, windows
from cpsc2018.readers import read_any
from cpsc2018.records import LEADS, RecordError
from export.metadata import FEATURES_INPUT_NAME, INPUT_NAME, MetadataError, ModelMeta

DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "model.int8.onnx"
DISPLAY_FS = 100.0  # what the screen draws: 1 point per pixel at 100 px/s (25 mm/s paper speed)


class ClassifyError(Exception):
    """Anything the user should read instead of a crash: bad file, wrong leads, too short, no model."""


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
    reference: list[str] = field(default_factory=list)  # the file's own labels, where it has any  # (12, n) band-passed mV at DISPLAY_FS, for the screen

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
        }


class Classifier:
    """The model and what its metadata says; ``classify(path)`` does the rest."""

    def __init__(self, model_path: Path | str = DEFAULT_MODEL, environ: dict[str, str] | None = None) -> None:
        self.path = Path(model_path)
        self.backend = make_backend(self.path, environ)
        try:
            self.meta = ModelMeta.from_props(self.backend.metadata(), source=str(self.path))
            self.pre = PreprocessConfig.from_dict(self.meta.preprocess)
        except (MetadataError, ValueError) as exc:
            raise ClassifyError(str(exc)) from None

    @property
    def description(self) -> str:
        q = self.meta.quantization
        kind = f"int8 ({q.get('format', 'QDQ')})" if q else "fp32"
        return f"{self.meta.model_name} · {kind}"

    def probabilities(self, signal: np.ndarray, fs: float) -> tuple[np.ndarray, float]:
        """Record probabilities (max over windows, as in training evaluation) and inference time in ms."""
        try:
            x = preprocess(signal, fs, self.pre)
        except ValueError as exc:  # SignalTooShort and friends
            raise ClassifyError(str(exc)) from None
        w = windows(x, self.pre, max_windows=EVAL_MAX_WINDOWS)
        feed = {INPUT_NAME: w}
        if self.meta.features:
            from cpsc2018.features import window_features

            feed[FEATURES_INPUT_NAME] = np.stack([window_features(v, self.pre.fs) for v in w]).astype(np.float32)
        t = time.perf_counter()
        out = self.backend.run(feed)
        ms = (time.perf_counter() - t) * 1e3
        probs = out if self.meta.output == "probabilities" else 1 / (1 + np.exp(-out))
        return probs.max(axis=0), ms

    def classify(self, record_path: Path | str) -> Result:
        try:
            rec = read_any(record_path)
        except RecordError as exc:
            raise ClassifyError(f"cannot read {Path(exc.path).name}: {exc.problem}") from None
        if rec.signal.shape[0] != 12 or tuple(rec.leads) != LEADS:
            raise ClassifyError(
                f"{Path(record_path).name} has {rec.signal.shape[0]} lead(s) ({', '.join(rec.leads)}); "
                "the model needs the 12 standard leads"
            )
        probs, ms = self.probabilities(rec.signal, rec.fs)
        labels = list(self.meta.labels)
        positives = [n for n, p, t in zip(labels, probs, self.meta.thresholds) if p >= t]
        return Result(
            record=rec.record_id, site=rec.site, fs=rec.fs, duration_s=rec.duration_s, labels=labels,
            probabilities=[float(p) for p in probs], thresholds=list(self.meta.thresholds), positives=positives,
            inference_ms=ms, model=self.description, display=display_signal(rec.signal, rec.fs, self.pre),
            reference=[n for n in labels if n in rec.classes],
        )


def display_signal(signal: np.ndarray, fs: float, pre: PreprocessConfig) -> np.ndarray:
    """What the screen draws: the same band-pass and notch as the model input, in mV (not z-scored)."""
    x = np.nan_to_num(np.asarray(signal, dtype=np.float64))
    x = notch(bandpass(x, fs, pre.band_low_hz, pre.band_high_hz, pre.filter_order), fs, pre.notch_hz)
    return resample(x, fs, DISPLAY_FS).astype(np.float32)
