"""Lead sets: which of the twelve standard leads a recording has, and how a model sees the rest.

One home for these facts (training, evaluation, export, predict and the app import them from here):

* :data:`STANDARD_SETS`: the lead sets the PhysioNet/CinC 2021 challenge scored (12, 6 limb leads,
  4, 3, 2) plus lead I alone, the single lead of wrist and handheld devices.
* Absent leads are ZEROED after preprocessing, in ``LEADS`` order: a model always sees
  ``[12, samples]``. Zero is also what the preprocessing makes of a flat lead (its z-score is 0), so
  a dead lead in a 12-lead record and an absent lead look the same to the model: the route the
  quality check takes for a 12-lead record with a dead lead (:func:`usable_leads`).
* A model trained for any subset (``lead_mask=True`` in :mod:`resnet1d.resnet`) derives the
  presence mask from the zeroed rows; a model trained for one set sees only that set's rows.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cpsc2018.records import LEADS, canonical_lead

# Largest first: :func:`route` picks the first set a record contains.
STANDARD_SETS: dict[str, tuple[str, ...]] = {
    "12": LEADS,
    "6": ("I", "II", "III", "aVR", "aVL", "aVF"),
    "4": ("I", "II", "III", "V2"),
    "3": ("I", "II", "V2"),
    "2": ("I", "II"),
    "1": ("I",),
}


class LeadSetError(ValueError):
    """A lead list that cannot be used: unknown names, duplicates, empty, or no supported set."""


def set_name(leads: Iterable[str]) -> str:
    """The short name of a lead set: its number if it is a standard set ("6"), else its leads joined ("II,V1")."""
    leads = ordered(leads)
    for name, members in STANDARD_SETS.items():
        if leads == members:
            return name
    return ",".join(leads)


def ordered(leads: Iterable[str]) -> tuple[str, ...]:
    """``leads`` (canonical names) in ``LEADS`` order, each once."""
    chosen = set(leads)
    return tuple(lead for lead in LEADS if lead in chosen)


def parse_leads(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"I,II,V2"``, ``"6"`` (a standard set's name) or a list of names -> lead names in ``LEADS`` order.

    Header spellings are accepted ("AVR", "avr"); an unknown or repeated name, or an empty list, raises
    :class:`LeadSetError` naming it."""
    if isinstance(text, str):
        key = text.strip()
        if key in STANDARD_SETS:
            return STANDARD_SETS[key]
        names = [n for n in (part.strip() for part in key.split(",")) if n]
    else:
        names = [str(n).strip() for n in text]
    if not names:
        raise LeadSetError(f"no lead given in {text!r}; give names from {', '.join(LEADS)} or a set: {', '.join(STANDARD_SETS)}")
    canon = [canonical_lead(n) for n in names]
    unknown = [n for n, c in zip(names, canon) if c not in LEADS]
    if unknown:
        raise LeadSetError(
            f"unknown lead name(s) {', '.join(unknown)}; the twelve are {', '.join(LEADS)} "
            f"(or a standard set: {', '.join(STANDARD_SETS)})"
        )
    repeated = sorted({c for c in canon if canon.count(c) > 1}, key=LEADS.index)
    if repeated:
        raise LeadSetError(f"lead(s) {', '.join(repeated)} given more than once in {text!r}")
    return ordered(canon)


LEADS_HELP = "only these leads: a standard set (12, 6, 4, 3, 2, 1) or names, e.g. I,II,V2"


def leads_argument(text: str) -> tuple[str, ...]:
    """``type=`` of every ``--leads`` flag: argparse reports a bad list in one line (exit code 2)."""
    import argparse

    try:
        return parse_leads(text)
    except LeadSetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def presence(leads: Iterable[str]) -> np.ndarray:
    """float32 ``[12]``: 1 where the lead is in ``leads``, in ``LEADS`` order."""
    chosen = set(leads)
    return np.array([1.0 if lead in chosen else 0.0 for lead in LEADS], dtype=np.float32)


def zero_absent(x: np.ndarray, leads: Iterable[str]) -> np.ndarray:
    """A copy of ``x`` (``[..., 12, samples]``, ``LEADS`` order) with the leads not in ``leads`` set to 0."""
    if x.shape[-2] != len(LEADS):
        raise ValueError(f"expected 12 leads on axis -2, got shape {x.shape}")
    return x * presence(leads)[:, None].astype(x.dtype)


def expand(signal: np.ndarray, leads: Sequence[str]) -> np.ndarray:
    """A record's own rows ``(len(leads), T)`` -> ``(12, T)`` in ``LEADS`` order, zeros where a lead is absent.

    Run after :func:`cpsc2018.preprocess.preprocess` (it works lead by lead, so preprocessing the
    present rows and zero-filling gives what preprocessing zero rows would)."""
    if signal.ndim != 2 or signal.shape[0] != len(leads):
        raise ValueError(f"expected {len(leads)} rows for leads {', '.join(leads)}, got shape {signal.shape}")
    canon = [canonical_lead(n) for n in leads]
    out = np.zeros((len(LEADS), signal.shape[1]), dtype=signal.dtype)
    for row, lead in zip(signal, canon):
        if lead in LEADS:
            out[LEADS.index(lead)] = row
    return out


def route(present: Iterable[str], supported: Sequence[Sequence[str]]) -> tuple[str, ...] | None:
    """The largest of the ``supported`` sets that ``present`` contains (ties: first listed), or None."""
    have = set(present)
    best: tuple[str, ...] | None = None
    for members in supported:
        members = ordered(members)
        if set(members) <= have and (best is None or len(members) > len(best)):
            best = members
    return best


class LeadSampler:
    """Random lead sets for training a model for any subset (``--lead-masking``).

    Each training window keeps all 12 leads with probability ``p_full``, else one of the reduced
    standard sets (uniformly), or, with probability ``p_random``, a random subset (each lead kept
    with probability 1/2, at least one): the standard sets are what devices record, the random
    subsets what a broken electrode leaves. Seeded, so a run is reproducible."""

    def __init__(self, seed: int, p_full: float = 0.25, p_random: float = 0.2) -> None:
        if not (0 <= p_full <= 1 and 0 <= p_random <= 1 and p_full + p_random <= 1):
            raise ValueError(f"p_full and p_random must be probabilities summing to at most 1, got {p_full}, {p_random}")
        self.rng = random.Random(seed)
        self.p_full, self.p_random = p_full, p_random
        self.reduced = [s for s in STANDARD_SETS.values() if len(s) < len(LEADS)]

    def draw(self) -> tuple[str, ...]:
        u = self.rng.random()
        if u < self.p_full:
            return LEADS
        if u < self.p_full + self.p_random:
            kept = [lead for lead in LEADS if self.rng.random() < 0.5]
            return ordered(kept) if kept else (self.rng.choice(LEADS),)
        return self.rng.choice(self.reduced)

    def masks(self, n: int) -> np.ndarray:
        """float32 ``[n, 12]`` presence masks, one draw per window."""
        return np.stack([presence(self.draw()) for _ in range(n)]) if n else np.zeros((0, len(LEADS)), np.float32)


# --- which lead sets a model file serves (metadata key ``lead_sets``; writers: export, export.pipeline) --
LEAD_SETS_KEY = "lead_sets"
LEAD_SETS_VERSION = 1


@dataclass(frozen=True)
class LeadSetEntry:
    """One supported lead set: its leads, the network file that serves it ("" = the file holding this
    metadata; else a file name beside it), whether that network takes any subset (then every present
    lead is fed, absent ones zeroed) or only these leads, and its own decision thresholds and
    calibration (None: the file's 12-lead ones)."""

    leads: tuple[str, ...]
    model: str = ""
    any_subset: bool = False
    thresholds: tuple[float, ...] | None = None
    calibration: dict | None = None

    def to_dict(self) -> dict:
        return {"leads": list(self.leads), "model": self.model, "any_subset": self.any_subset,
                "thresholds": None if self.thresholds is None else [float(t) for t in self.thresholds],
                "calibration": self.calibration}


@dataclass(frozen=True)
class LeadSupport:
    """The lead sets a model file serves, by set name (:func:`set_name`)."""

    sets: dict[str, LeadSetEntry]

    @classmethod
    def twelve_only(cls) -> "LeadSupport":
        """What a file without the ``lead_sets`` key serves (every model before issue 21)."""
        return cls({"12": LeadSetEntry(LEADS)})

    @classmethod
    def for_model(cls, model_kwargs: dict, lead_thresholds: dict[str, Sequence[float]] | None = None) -> "LeadSupport":
        """What a network built with ``model_kwargs`` serves on its own: any standard set for a
        ``lead_mask`` model, its one set for an ``input_mask`` model, else the 12 leads."""
        lead_thresholds = lead_thresholds or {}
        if model_kwargs.get("lead_mask"):
            return cls({name: LeadSetEntry(members, "", True, _tuple(lead_thresholds.get(name)))
                        for name, members in STANDARD_SETS.items()})
        mask = model_kwargs.get("input_mask")
        if mask is not None:
            members = tuple(lead for lead, keep in zip(LEADS, mask) if keep)
            return cls({set_name(members): LeadSetEntry(members)})
        return cls.twelve_only()

    def to_json(self) -> str:
        return json.dumps({"version": LEAD_SETS_VERSION, "sets": {k: v.to_dict() for k, v in self.sets.items()}})

    @classmethod
    def from_json(cls, text: str, source: str = "model", n_classes: int | None = None) -> "LeadSupport":
        """Parse and check the ``lead_sets`` value; :class:`LeadSetError` names the file and the problem."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError:
            raise LeadSetError(f"{source}: metadata key '{LEAD_SETS_KEY}' is not valid JSON") from None
        if not isinstance(raw, dict) or raw.get("version") != LEAD_SETS_VERSION or not isinstance(raw.get("sets"), dict) or not raw["sets"]:
            raise LeadSetError(f"{source}: metadata key '{LEAD_SETS_KEY}' must be {{'version': {LEAD_SETS_VERSION}, 'sets': {{...}}}} with at least one set")
        sets = {}
        for name, e in raw["sets"].items():
            try:
                leads = parse_leads(e["leads"])
                model = str(e.get("model", ""))
                thr = _tuple(e.get("thresholds"))
            except (KeyError, TypeError, ValueError) as exc:
                raise LeadSetError(f"{source}: lead set {name!r} malformed ({exc})") from None
            if model and (Path(model).name != model or model in (".", "..")):
                raise LeadSetError(f"{source}: lead set {name!r} names model {model!r}; it must be a file name beside the model")
            if thr is not None and n_classes is not None and len(thr) != n_classes:
                raise LeadSetError(f"{source}: lead set {name!r} has {len(thr)} thresholds for {n_classes} labels")
            cal = e.get("calibration")
            if cal is not None and not isinstance(cal, dict):
                raise LeadSetError(f"{source}: lead set {name!r} calibration must be a JSON object or null")
            sets[str(name)] = LeadSetEntry(leads, model, bool(e.get("any_subset", False)), thr, cal)
        return cls(sets)

    def choose(self, present: Iterable[str]) -> str | None:
        """The name of the largest supported set that the ``present`` leads contain, or None."""
        best = route(present, [e.leads for e in self.sets.values()])
        if best is None:
            return None
        return next(name for name, e in self.sets.items() if e.leads == best)

    def fed_leads(self, name: str, present: Iterable[str]) -> tuple[str, ...]:
        """The leads the network of set ``name`` is given: every present lead if it takes any subset,
        else exactly the set's leads."""
        e = self.sets[name]
        return ordered(present) if e.any_subset else e.leads

    def describe(self) -> str:
        return "; ".join(f"{name} ({', '.join(e.leads)})" for name, e in self.sets.items())


def _tuple(values: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)
