"""The Kivy App: wires the screens, the widgets and ``inference.Classifier`` together."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from kivy.app import App
from kivy.clock import Clock
from kivy.core.window import Window
from kivy.lang import Builder
from kivy.properties import ListProperty, NumericProperty, StringProperty
from kivy.uix.screenmanager import NoTransition, Screen, ScreenManager

from cpsc2018.readers import read_any
from cpsc2018.records import LEADS, RecordError
from cpsc2018.util import atomic_write_text
from mobile_app.explain import Explanation, explain
from mobile_app.inference import DISPLAY_FS, Classifier, ClassifyError, Result
from mobile_app.settings import Settings
from mobile_app.widgets import EcgPaper, ProbabilityBar

HERE = Path(__file__).resolve().parent
ABOUT = (
    "ECG-Lite classifies a 12-lead ECG recording into six findings: atrial fibrillation (AF), "
    "first-degree AV block (I-AVB), left and right bundle branch block (LBBB, RBBB), premature atrial "
    "and ventricular contractions (PAC, PVC).\n\n"
    "It is a research tool, not a diagnosis and not a medical device. Its output must not guide the "
    "care of a patient. The shipped model was trained on a few hundred public recordings only.\n\n"
    "The model runs on this device (int8 ONNX); no recording leaves it. Bars show each probability "
    "(calibrated: of recordings shown 70 %, about 70 % carried the finding in validation); the black tick "
    "is the model's decision threshold; red marks a finding above it.\n\n"
    "The signal quality is checked first: leads that are flat, clipped or noisy are marked with '!' and "
    "a finding that rests on one is greyed; an unusable recording shows why instead of probabilities. "
    "Orange shading marks the leads and moments that drove the strongest finding (occlusion: how much "
    "its probability falls when they are hidden)."
)
VERDICT_RGBA = {"good": [0.10, 0.45, 0.15, 1], "usable": [0.70, 0.40, 0.0, 1], "unusable": [0.75, 0.05, 0.05, 1]}
log = logging.getLogger("ecg-lite")


class MainScreen(Screen):
    record_text = StringProperty("Open a recording (.hea or CPSC2018 .mat)")
    message_text = StringProperty("")
    footer_text = StringProperty("")
    verdict_text = StringProperty("")
    verdict_rgba = ListProperty([0.15, 0.15, 0.2, 1])
    gain = NumericProperty(10)


class AboutScreen(Screen):
    about_text = StringProperty(ABOUT)


class ChooserScreen(Screen):
    start_folder = StringProperty(str(Path.home()))


class EcgLiteApp(App):
    title = "ECG-Lite"

    def __init__(self, model: Path, record: Path | None, screenshot: Path | None, result_json: Path | None,
                 gain: float = 10.0, leads: tuple[str, ...] | None = None, **kw) -> None:
        super().__init__(**kw)
        self.leads = leads  # --leads: use only these leads of every recording (None: all it has that read well)
        self.model_path, self.record, self.screenshot, self.result_json = model, record, screenshot, result_json
        self.initial_gain = gain
        self.classifier: Classifier | None = None
        self.last: dict = {}

    def build(self) -> ScreenManager:
        for kv in ("main.kv", "about.kv", "chooser.kv"):
            Builder.load_file(str(HERE / kv))
        self.settings = Settings(self.user_data_dir)
        sm = ScreenManager(transition=NoTransition())
        self.main = MainScreen(name="main")
        sm.add_widget(self.main)
        sm.add_widget(AboutScreen(name="about"))
        self.chooser = ChooserScreen(name="chooser")
        sm.add_widget(self.chooser)
        self.paper = EcgPaper()
        self.main.ids.ecg_box.add_widget(self.paper)
        self.set_gain(self.initial_gain)
        try:
            self.classifier = Classifier(self.model_path)
            self.main.footer_text = f"Model: {self.classifier.description}. Research tool, not a diagnosis."
        except ClassifyError as exc:
            self.show_error(str(exc))
        if self.record is not None:
            Clock.schedule_once(lambda _dt: self.open_record(self.record), 0)
        elif self.screenshot is not None:
            Clock.schedule_once(lambda _dt: self._finish(), 0.5)
        return sm

    def show_main(self) -> None:
        self.root.current = "main"

    def show_about(self) -> None:
        self.root.current = "about"

    def show_chooser(self) -> None:
        self.chooser.start_folder = self.settings.last_folder or str(Path.home())
        self.root.current = "chooser"

    def set_gain(self, mm_per_mv: float) -> None:
        """The paper's gain (5, 10 or 20 mm/mV), as on an ECG machine."""
        self.paper.gain = float(mm_per_mv)
        self.main.gain = float(mm_per_mv)
        if self.last and "error" not in self.last:
            self.last["gain_mm_per_mv"] = float(mm_per_mv)

    def show_error(self, text: str) -> None:
        self.main.message_text = text
        self.last = {"error": text}
        log.warning(text)

    def open_record(self, path: Path | str) -> None:
        self.show_main()
        path = Path(path)
        try:
            if self.classifier is None:
                raise ClassifyError(self.main.message_text or "no model loaded")
            try:
                rec = read_any(path)
            except RecordError as exc:
                raise ClassifyError(f"cannot read {Path(exc.path).name}: {exc.problem}") from None
            result = self.classifier.classify_record(rec, leads=self.leads)
            # What drove the findings: occlusion with the same int8 model (about 0.1-0.5 s a record); it
            # occludes the 12 leads of the full pipeline, so a reduced lead set shows no shading.
            full = result.leads_used == list(LEADS)
            why = explain(self.classifier, rec.signal, rec.fs) if result.positives and not result.withheld and full else None
            self.settings.remember_record(path)
            self.show_result(result, why)
        except ClassifyError as exc:
            self.main.record_text = path.name
            self.main.verdict_text = ""
            self.paper.show(None, DISPLAY_FS)  # no stale trace of the previous recording
            self.main.ids.bars.clear_widgets()
            self.show_error(str(exc))
        except Exception as exc:  # never crash in front of a user: say what happened instead
            log.exception("unexpected error")
            self.show_error(f"{path.name}: unexpected error ({type(exc).__name__}: {exc})")
        if self.screenshot is not None:
            Clock.schedule_once(lambda _dt: self._finish(), 0.5)

    def show_result(self, r: Result, why: Explanation | None = None) -> None:
        """The verdict above everything; then either why the recording is unusable, or the bars (a finding
        resting on a flagged lead greyed) and the paper shaded by what drove the strongest finding."""
        self.main.message_text = ""
        self.main.record_text = f"{r.record} · {r.site} · {r.duration_s:.1f} s · {r.fs:g} Hz · {r.inference_ms:.1f} ms"
        q = r.quality
        self.main.verdict_text = "\n".join(t for t in (q.text if q is not None else "", r.lead_note) if t)
        self.main.verdict_rgba = VERDICT_RGBA.get(q.verdict if q else "", [0.15, 0.15, 0.2, 1])
        flagged = q.warned_leads if q is not None else ()
        bars = self.main.ids.bars
        bars.clear_widgets()
        self.last = r.to_json()
        if r.withheld:
            self.paper.show(r.display, DISPLAY_FS, flagged=flagged)
            self.main.message_text = "Recording unusable: probabilities withheld. Record again."
            self.main.footer_text = f"Model: {r.model}. Research tool, not a diagnosis."
            return
        shaded = None
        if why is not None and why.labels:
            shaded = max(why.labels, key=lambda n: why.probabilities[n])  # the strongest finding
            self.paper.show(r.display, DISPLAY_FS, flagged=flagged, lead_shade=why.lead_share(shaded),
                            time_shade=why.time_share(shaded), segment_s=why.segment_s)
        else:
            self.paper.show(r.display, DISPLAY_FS, flagged=flagged)
        greyed: dict[str, list[str]] = {}
        for name, prob, thr in zip(r.labels, r.probabilities, r.thresholds):
            rests = why.rests_on(name, flagged) if why is not None and name in why.labels else []
            if rests:
                greyed[name] = rests
            bars.add_widget(ProbabilityBar(name, prob, thr, positive=name in r.positives, greyed=bool(rests),
                                           note=f"rests on {','.join(rests)}!" if rests else ""))
        found = ", ".join(r.positives) if r.positives else "none of the six"
        shade = f" Shaded: what drove {shaded}." if shaded else ""
        self.main.footer_text = f"Model: {r.model}. Above threshold: {found}.{shade} Research tool, not a diagnosis."
        self.last["greyed"] = greyed
        self.last["shaded"] = shaded
        self.last["gain_mm_per_mv"] = float(self.paper.gain)
        if why is not None:
            self.last["explanation"] = why.to_json()

    def _finish(self) -> None:
        """--screenshot: save the window as PNG (and the result as JSON), then quit."""
        if self.result_json is not None:
            atomic_write_text(self.result_json, json.dumps(self.last))
        if self.screenshot is not None:
            self.screenshot.parent.mkdir(parents=True, exist_ok=True)
            self.root.export_to_png(str(self.screenshot))
        self.stop()


def run(model: Path, record: Path | None, screenshot: Path | None, result_json: Path | None, gain: float = 10.0,
        leads: tuple[str, ...] | None = None) -> None:
    Window.size = (480, 800)  # a phone-shaped window on desktops
    EcgLiteApp(model, record, screenshot, result_json, gain, leads).run()
