"""The Kivy App: wires the screens, the widgets and ``inference.Classifier`` together."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from kivy.app import App
from kivy.clock import Clock
from kivy.core.window import Window
from kivy.lang import Builder
from kivy.properties import StringProperty
from kivy.uix.screenmanager import NoTransition, Screen, ScreenManager

from cpsc2018.util import atomic_write_text
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
    "The model runs on this device (int8 ONNX); no recording leaves it. Bars show each probability; "
    "the black tick is the model's decision threshold; red marks a finding above it."
)
log = logging.getLogger("ecg-lite")


class MainScreen(Screen):
    record_text = StringProperty("Open a recording (.hea or CPSC2018 .mat)")
    message_text = StringProperty("")
    footer_text = StringProperty("")


class AboutScreen(Screen):
    about_text = StringProperty(ABOUT)


class ChooserScreen(Screen):
    start_folder = StringProperty(str(Path.home()))


class EcgLiteApp(App):
    title = "ECG-Lite"

    def __init__(self, model: Path, record: Path | None, screenshot: Path | None, result_json: Path | None, **kw) -> None:
        super().__init__(**kw)
        self.model_path, self.record, self.screenshot, self.result_json = model, record, screenshot, result_json
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
            result = self.classifier.classify(path)
            self.settings.remember_record(path)
            self.show_result(result)
        except ClassifyError as exc:
            self.main.record_text = path.name
            self.paper.show(None, DISPLAY_FS)  # no stale trace of the previous recording
            self.main.ids.bars.clear_widgets()
            self.show_error(str(exc))
        except Exception as exc:  # never crash in front of a user: say what happened instead
            log.exception("unexpected error")
            self.show_error(f"{path.name}: unexpected error ({type(exc).__name__}: {exc})")
        if self.screenshot is not None:
            Clock.schedule_once(lambda _dt: self._finish(), 0.5)

    def show_result(self, r: Result) -> None:
        self.main.message_text = ""
        self.main.record_text = f"{r.record} · {r.site} · {r.duration_s:.1f} s · {r.fs:g} Hz · {r.inference_ms:.1f} ms"
        self.paper.show(r.display, DISPLAY_FS)
        bars = self.main.ids.bars
        bars.clear_widgets()
        for name, prob, thr in zip(r.labels, r.probabilities, r.thresholds):
            bars.add_widget(ProbabilityBar(name, prob, thr))
        found = ", ".join(r.positives) if r.positives else "none of the six"
        self.main.footer_text = f"Model: {r.model}. Above threshold: {found}. Research tool, not a diagnosis."
        self.last = r.to_json()

    def _finish(self) -> None:
        """--screenshot: save the window as PNG (and the result as JSON), then quit."""
        if self.result_json is not None:
            atomic_write_text(self.result_json, json.dumps(self.last))
        if self.screenshot is not None:
            self.screenshot.parent.mkdir(parents=True, exist_ok=True)
            self.root.export_to_png(str(self.screenshot))
        self.stop()


def run(model: Path, record: Path | None, screenshot: Path | None, result_json: Path | None) -> None:
    Window.size = (480, 800)  # a phone-shaped window on desktops
    EcgLiteApp(model, record, screenshot, result_json).run()
