"""Kivy widgets: the 12-lead ECG paper and the probability bars. Drawing only; no inference here."""

from __future__ import annotations

import numpy as np
from kivy.graphics import Color, Line, Rectangle
from kivy.properties import NumericProperty
from kivy.uix.label import Label
from kivy.uix.widget import Widget

from cpsc2018.records import LEADS

PX_PER_S = 100.0  # 25 mm/s paper: one 0.04 s small square = 4 px
PX_PER_MV = 40.0  # 10 mm/mV paper: one 0.1 mV small square = 4 px, so squares stay square
ROW_PX = 36.0  # vertical space per lead; large QRS complexes overlap the next row as on paper
LABEL_PX = 34.0  # left margin for lead names


class EcgPaper(Widget):
    """The 12 leads on ECG paper (pink small squares, red large squares). Its width follows the
    recording's duration; put it in a horizontal ScrollView to move through time."""

    zoom = NumericProperty(1.0)

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.signal: np.ndarray | None = None
        self.fs = 100.0
        self.size_hint = (None, None)
        self.height = ROW_PX * len(LEADS) + 8
        self.bind(pos=self.redraw, zoom=self.redraw)

    def show(self, signal: np.ndarray | None, fs: float) -> None:
        self.signal, self.fs = signal, fs
        self.redraw()

    def redraw(self, *_) -> None:
        self.canvas.clear()
        self.clear_widgets()
        if self.signal is None:
            return
        sx = PX_PER_S * self.zoom
        n = self.signal.shape[1]
        self.width = LABEL_PX + n / self.fs * sx + 4
        x0, y0, w, h = self.x, self.y, self.width, self.height
        with self.canvas:
            Color(1, 0.97, 0.96, 1)
            Rectangle(pos=(x0, y0), size=(w, h))
            step = 0.04 * sx  # small squares
            Color(0.98, 0.80, 0.80, 1)
            xs = np.arange(x0 + LABEL_PX, x0 + w, step)
            for i, x in enumerate(xs):
                if i % 5:
                    Line(points=[x, y0, x, y0 + h], width=1)
            for i, y in enumerate(np.arange(y0, y0 + h, 0.1 * PX_PER_MV)):
                if i % 5:
                    Line(points=[x0 + LABEL_PX, y, x0 + w, y], width=1)
            Color(0.93, 0.55, 0.55, 1)  # large squares: 0.2 s x 0.5 mV
            for x in xs[::5]:
                Line(points=[x, y0, x, y0 + h], width=1)
            for y in np.arange(y0, y0 + h, 0.5 * PX_PER_MV):
                Line(points=[x0 + LABEL_PX, y, x0 + w, y], width=1)
            Color(0.05, 0.05, 0.1, 1)
            t = x0 + LABEL_PX + np.arange(n) / self.fs * sx
            for k in range(len(LEADS)):
                base = y0 + h - (k + 0.6) * ROW_PX
                v = np.clip(self.signal[k], -2.0, 2.0) * PX_PER_MV + base
                pts = np.empty(2 * n, dtype=np.float64)
                pts[0::2], pts[1::2] = t, v
                Line(points=pts.tolist(), width=1.1)
        for k, lead in enumerate(LEADS):
            base = y0 + h - (k + 0.6) * ROW_PX
            self.add_widget(Label(text=lead, color=(0.1, 0.1, 0.3, 1), bold=True, font_size="13sp",
                                  pos=(x0 + 2, base - 8), size=(LABEL_PX - 4, 18), size_hint=(None, None)))


class ProbabilityBar(Widget):
    """One disease: its name, a bar of the probability, a tick at the decision threshold."""

    def __init__(self, label: str, prob: float, threshold: float, **kw) -> None:
        super().__init__(**kw)
        self.label, self.prob, self.threshold = label, prob, threshold
        self.positive = prob >= threshold
        self.name_label = Label(text=f"[b]{label}[/b]" if self.positive else label, markup=True, halign="left",
                                color=(0.75, 0.05, 0.05, 1) if self.positive else (0.15, 0.15, 0.2, 1), font_size="15sp")
        self.value_label = Label(text=f"{prob * 100:.0f} %", color=(0.15, 0.15, 0.2, 1), font_size="14sp", bold=self.positive)
        self.add_widget(self.name_label)
        self.add_widget(self.value_label)
        self.bind(pos=self.redraw, size=self.redraw)

    def redraw(self, *_) -> None:
        name_w, value_w = 70, 60
        self.name_label.pos, self.name_label.size = (self.x + 6, self.y), (name_w, self.height)
        self.name_label.text_size = self.name_label.size
        self.name_label.valign = "middle"
        self.value_label.pos, self.value_label.size = (self.right - value_w, self.y), (value_w, self.height)
        bx, bw = self.x + name_w + 10, self.width - name_w - value_w - 20
        by, bh = self.y + self.height * 0.25, self.height * 0.5
        self.canvas.before.clear()
        with self.canvas.before:
            Color(0.90, 0.91, 0.94, 1)
            Rectangle(pos=(bx, by), size=(bw, bh))
            if self.positive:
                Color(0.85, 0.15, 0.15, 1)
            else:
                Color(0.30, 0.50, 0.78, 1)
            Rectangle(pos=(bx, by), size=(bw * max(0.0, min(1.0, self.prob)), bh))
            Color(0.1, 0.1, 0.1, 1)  # the model's decision threshold for this disease
            tx = bx + bw * self.threshold
            Line(points=[tx, by - 4, tx, by + bh + 4], width=1.6)
