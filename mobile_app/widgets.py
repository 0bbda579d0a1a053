"""Kivy widgets: the 12-lead ECG paper and the probability bars. Drawing only; no inference here.

The paper is drawn as ECG printers do: 25 mm/s, a gain of 5, 10 (default) or 20 mm/mV, each lead's
trace drawn at its true amplitude around its row's baseline and allowed to run into the neighbouring
rows (a tall QRS overlaps, it is never cut flat at a band edge, which would look like saturation), a
1 mV calibration pulse (0.2 s wide) at the start of each lead, and the gain written on the paper.
Optional overlays: leads flagged by the quality check (their name in red), and the attribution of a
finding (``mobile_app.explain``): the leads that drove it as a tinted band behind their row, the
times as tinted columns.
"""

from __future__ import annotations

import numpy as np
from kivy.graphics import Color, Line, Rectangle
from kivy.properties import NumericProperty
from kivy.uix.label import Label
from kivy.uix.widget import Widget

from cpsc2018.records import LEADS

PX_PER_S = 100.0  # 25 mm/s paper: 4 px per mm, one 0.04 s small square = 4 px
PX_PER_MM = 4.0  # the paper's scale; at 10 mm/mV one 0.1 mV small square = 4 px, so squares stay square
GAINS_MM_PER_MV: tuple[float, ...] = (5.0, 10.0, 20.0)  # what ECG machines offer; 10 mm/mV is the standard
ROW_PX = 35.0  # vertical space per lead; large QRS complexes overlap the next row as on paper
LABEL_PX = 34.0  # left margin for lead names
PULSE_S = 0.2  # calibration pulse: 1 mV for 0.2 s, as printed by ECG machines
PULSE_GAP_S = 0.1  # paper between the pulse and the trace
SHADE_RGB = (1.0, 0.55, 0.0)  # attribution overlay colour (orange on pink paper)


class EcgPaper(Widget):
    """The 12 leads on ECG paper (pink small squares, red large squares). Its width follows the
    recording's duration; put it in a horizontal ScrollView to move through time."""

    zoom = NumericProperty(1.0)
    gain = NumericProperty(10.0)  # mm/mV

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.signal: np.ndarray | None = None
        self.fs = 100.0
        self.flagged: tuple[str, ...] = ()
        self.lead_shade: np.ndarray | None = None  # (12,) in [0, 1]
        self.time_shade: np.ndarray | None = None  # (n_segments,) in [0, 1]
        self.shade_segment_s = 0.05
        self.size_hint = (None, None)
        self.height = ROW_PX * len(LEADS) + 8
        self.bind(pos=self.redraw, zoom=self.redraw, gain=self.redraw)

    def show(self, signal: np.ndarray | None, fs: float, *, flagged: tuple[str, ...] | list[str] = (),
             lead_shade: np.ndarray | None = None, time_shade: np.ndarray | None = None, segment_s: float = 0.05) -> None:
        """Draw ``signal`` (12, n) in mV at ``fs``; ``flagged`` lead names; shades scaled to [0, 1] here."""
        self.signal, self.fs, self.flagged = signal, fs, tuple(flagged)

        def unit(a: np.ndarray | None) -> np.ndarray | None:
            if a is None:
                return None
            a = np.clip(np.asarray(a, dtype=np.float64), 0.0, None)
            return a / a.max() if a.size and a.max() > 0 else None

        self.lead_shade, self.time_shade, self.shade_segment_s = unit(lead_shade), unit(time_shade), segment_s
        self.redraw()

    @property
    def px_per_mv(self) -> float:
        return self.gain * PX_PER_MM

    @property
    def trace_x0(self) -> float:
        """Where the traces start (after the name margin, the pulse and a gap), relative to x."""
        return LABEL_PX + (PULSE_S + PULSE_GAP_S) * PX_PER_S * self.zoom + 4

    def redraw(self, *_) -> None:
        self.canvas.clear()
        self.clear_widgets()
        if self.signal is None:
            return
        sx = PX_PER_S * self.zoom
        n = self.signal.shape[1]
        self.width = self.trace_x0 + n / self.fs * sx + 4
        x0, y0, w, h = self.x, self.y, self.width, self.height
        tx0 = x0 + self.trace_x0
        with self.canvas:
            Color(1, 0.97, 0.96, 1)
            Rectangle(pos=(x0, y0), size=(w, h))
            if self.lead_shade is not None:  # leads that drove the finding: a band behind their row
                for k, s in enumerate(self.lead_shade):
                    if s > 0.05:
                        Color(*SHADE_RGB, 0.35 * s)
                        Rectangle(pos=(x0 + LABEL_PX, y0 + h - (k + 1) * ROW_PX - 4), size=(w - LABEL_PX, ROW_PX))
            if self.time_shade is not None:  # times that drove it: columns over every lead
                seg_px = self.shade_segment_s * sx
                for j, s in enumerate(self.time_shade):
                    if s > 0.1:
                        Color(*SHADE_RGB, 0.45 * s)
                        Rectangle(pos=(tx0 + j * seg_px, y0), size=(seg_px, h))
            step = 0.04 * sx  # small squares
            Color(0.98, 0.80, 0.80, 1)
            xs = np.arange(x0 + LABEL_PX, x0 + w, step)
            for i, x in enumerate(xs):
                if i % 5:
                    Line(points=[x, y0, x, y0 + h], width=1)
            ys = np.arange(y0, y0 + h, PX_PER_MM)  # 1 mm, whatever the gain (the paper does not change)
            for i, y in enumerate(ys):
                if i % 5:
                    Line(points=[x0 + LABEL_PX, y, x0 + w, y], width=1)
            Color(0.93, 0.55, 0.55, 1)  # large squares: 5 mm
            for x in xs[::5]:
                Line(points=[x, y0, x, y0 + h], width=1)
            for y in ys[::5]:
                Line(points=[x0 + LABEL_PX, y, x0 + w, y], width=1)
            Color(0.05, 0.05, 0.1, 1)
            t = tx0 + np.arange(n) / self.fs * sx
            mv = self.px_per_mv
            p0, p1 = x0 + LABEL_PX + 2, x0 + LABEL_PX + 2 + PULSE_S * sx
            for k in range(len(LEADS)):
                base = y0 + h - (k + 0.6) * ROW_PX
                # 1 mV calibration pulse: the height a reader checks the gain against
                Line(points=[p0 - 2, base, p0, base, p0, base + mv, p1, base + mv, p1, base, tx0, base], width=1.1)
                v = self.signal[k] * mv + base  # true amplitude: no clipping to the row
                pts = np.empty(2 * n, dtype=np.float64)
                pts[0::2], pts[1::2] = t, v
                Line(points=pts.tolist(), width=1.1)
        for k, lead in enumerate(LEADS):
            base = y0 + h - (k + 0.6) * ROW_PX
            bad = lead in self.flagged
            self.add_widget(Label(text=lead + ("!" if bad else ""), color=(0.8, 0.1, 0.1, 1) if bad else (0.1, 0.1, 0.3, 1),
                                  bold=True, font_size="13sp", pos=(x0 + 2, base - 8), size=(LABEL_PX - 4, 18), size_hint=(None, None)))
        self.add_widget(Label(text=f"{self.gain:g} mm/mV  25 mm/s", color=(0.45, 0.1, 0.1, 1), font_size="11sp", bold=True,
                              pos=(tx0 + 4, y0 + h - 14), size=(150, 14), size_hint=(None, None), halign="left"))


class ProbabilityBar(Widget):
    """One disease: its name, a bar of the probability, a tick at the decision threshold. ``greyed``:
    the finding rests on a lead the quality check flagged (``note`` names it)."""

    def __init__(self, label: str, prob: float, threshold: float, positive: bool | None = None,
                 greyed: bool = False, note: str = "", **kw) -> None:
        super().__init__(**kw)
        self.label, self.prob, self.threshold = label, prob, threshold
        self.positive = prob >= threshold if positive is None else positive
        self.greyed = greyed
        grey = (0.55, 0.55, 0.58, 1)
        name_colour = grey if greyed else (0.75, 0.05, 0.05, 1) if self.positive else (0.15, 0.15, 0.2, 1)
        text = f"[b]{label}[/b]" if self.positive and not greyed else label
        self.name_label = Label(text=text, markup=True, halign="left", color=name_colour, font_size="15sp")
        value = f"{prob * 100:.0f} %" + (f"  {note}" if note else "")
        self.value_label = Label(text=value, color=grey if greyed else (0.15, 0.15, 0.2, 1), font_size="13sp" if note else "14sp",
                                 bold=self.positive and not greyed)
        self.add_widget(self.name_label)
        self.add_widget(self.value_label)
        self.bind(pos=self.redraw, size=self.redraw)

    def redraw(self, *_) -> None:
        name_w, value_w = 70, 60 if not self.greyed else 120
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
            if self.greyed:
                Color(0.70, 0.70, 0.72, 1)
            elif self.positive:
                Color(0.85, 0.15, 0.15, 1)
            else:
                Color(0.30, 0.50, 0.78, 1)
            Rectangle(pos=(bx, by), size=(bw * max(0.0, min(1.0, self.prob)), bh))
            Color(0.1, 0.1, 0.1, 1)  # the model's decision threshold for this disease
            tx = bx + bw * self.threshold
            Line(points=[tx, by - 4, tx, by + bh + 4], width=1.6)
