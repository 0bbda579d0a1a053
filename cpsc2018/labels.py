"""The one label table of ECG-Lite: every source's codes mapped onto the target classes.

Two label sets are defined here and nowhere else:

* ``six`` (the product's target, multi-label): AF, I-AVB, LBBB, RBBB, PAC, PVC. A record with
  none of them (Normal, ST changes, anything else) is all-negative.
* ``cpsc9``: the nine CPSC2018 classes (Normal, AF, I-AVB, LBBB, RBBB, PAC, PVC, STD, STE), kept
  for comparison with the CPSC2018 literature and its official score.

Each class lists its code in every coding system the readers meet:

* ``cpsc_text``   - CPSC2018 abbreviations in the ``#Dx:`` line of the PhysioNet/CinC 2020 release;
* ``cpsc_number`` - the numbers 1-9 of the original challenge's ``REFERENCE.csv``;
* ``snomed``      - SNOMED-CT concept ids of the PhysioNet/CinC 2020-2021 headers; equivalent codes
  that the challenge scored as one class (e.g. 59118001 and 713427006 for RBBB) are listed together;
* ``scp``         - PTB-XL SCP-ECG statement codes.

Unknown codes are "other": they map to no class and are never an error, because every database
carries dozens of statements (sinus rhythm, axis deviation, ...) outside the target set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

CODE_SYSTEMS: tuple[str, ...] = ("cpsc_text", "cpsc_number", "snomed", "scp")


@dataclass(frozen=True)
class ClassDef:
    """One target class and its codes in every source's coding system."""

    name: str
    description: str
    cpsc_text: tuple[str, ...] = ()
    cpsc_number: tuple[str, ...] = ()
    snomed: tuple[str, ...] = ()
    scp: tuple[str, ...] = ()

    def codes(self, system: str) -> tuple[str, ...]:
        if system not in CODE_SYSTEMS:
            raise ValueError(f"unknown code system {system!r}; expected one of {CODE_SYSTEMS}")
        return getattr(self, system.replace("-", "_"))


# The nine CPSC2018 classes. SNOMED codes follow the PhysioNet/CinC 2020-2021 scoring tables;
# SCP codes follow PTB-XL's scp_statements.csv (Wagner et al., Sci. Data 7:154, 2020).
_CLASSES: dict[str, ClassDef] = {
    c.name: c
    for c in (
        ClassDef("Normal", "normal ECG / sinus rhythm", ("Normal",), ("1",), ("426783006",), ("NORM",)),
        ClassDef("AF", "atrial fibrillation", ("AF",), ("2",), ("164889003",), ("AFIB",)),
        ClassDef("I-AVB", "first-degree AV block", ("I-AVB",), ("3",), ("270492004",), ("1AVB",)),
        ClassDef(
            "LBBB", "left bundle branch block", ("LBBB",), ("4",), ("164909002", "733534002"), ("CLBBB",)
        ),
        ClassDef(
            "RBBB", "right bundle branch block", ("RBBB",), ("5",), ("59118001", "713427006"), ("CRBBB",)
        ),
        ClassDef(
            "PAC", "premature atrial contraction", ("PAC",), ("6",), ("284470004", "63593006"), ("PAC",)
        ),
        ClassDef(
            "PVC",
            "premature ventricular contraction",
            ("PVC",),
            ("7",),
            ("427172004", "17338001"),
            ("PVC",),
        ),
        ClassDef("STD", "ST-segment depression", ("STD",), ("8",), ("429622005",), ("STD_",)),
        ClassDef("STE", "ST-segment elevation", ("STE",), ("9",), ("164931005",), ("STE_",)),
    )
}

SIX: tuple[str, ...] = ("AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC")
CPSC9: tuple[str, ...] = ("Normal", "AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC", "STD", "STE")
# The five AAMI EC57 heartbeat classes (ANSI/AAMI EC57:1998; the inter-patient protocol of de Chazal et
# al., IEEE TBME 51:1196, 2004) and the MIT-BIH beat symbols each one pools. Beat classification is
# multi-class (one class per beat), unlike the record-level label sets above. Every other annotation
# (rhythm changes "+", noise "~", comments, non-conducted P waves "x", ...) is not a beat and is skipped.
AAMI: tuple[str, ...] = ("N", "S", "V", "F", "Q")
AAMI_SYMBOLS: dict[str, tuple[str, ...]] = {
    "N": ("N", "L", "R", "e", "j"),  # normal, bundle branch block, atrial / nodal escape
    "S": ("A", "a", "J", "S"),  # supraventricular ectopic: atrial / aberrated atrial / nodal / SV premature
    "V": ("V", "E"),  # premature ventricular contraction, ventricular escape
    "F": ("F",),  # fusion of ventricular and normal
    "Q": ("/", "f", "Q"),  # paced, fusion of paced and normal, unclassifiable
}
_AAMI_INDEX = {sym: cls for cls, syms in AAMI_SYMBOLS.items() for sym in syms}


def aami_class(symbol: str) -> str | None:
    """The AAMI class of a WFDB beat annotation symbol, or None for a non-beat annotation."""
    return _AAMI_INDEX.get(symbol)


LABEL_SETS: dict[str, tuple[str, ...]] = {"six": SIX, "cpsc9": CPSC9, "aami": AAMI}


def label_names(label_set: str = "six") -> tuple[str, ...]:
    """Class names of a label set, in the order every model output and metric uses."""
    try:
        return LABEL_SETS[label_set]
    except KeyError:
        raise ValueError(f"unknown label set {label_set!r}; expected one of {sorted(LABEL_SETS)}") from None


def class_def(name: str) -> ClassDef:
    try:
        return _CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown class {name!r}; expected one of {sorted(_CLASSES)}") from None


def _build_index() -> dict[tuple[str, str], str]:
    index: dict[tuple[str, str], str] = {}
    for cls in _CLASSES.values():
        for system in CODE_SYSTEMS:
            for code in cls.codes(system):
                index[(system, _norm(system, code))] = cls.name
    return index


def _norm(system: str, code: str) -> str:
    code = code.strip()
    # CPSC abbreviations appear in mixed case in the wild ("I-AVB", "i-avb"); SCP codes are upper.
    return code.upper() if system in ("cpsc_text", "scp") else code


_INDEX = _build_index()


def code_to_class(code: str, system: str) -> str | None:
    """The class a single source code maps to, or None for "other" (never an error)."""
    if system not in CODE_SYSTEMS:
        raise ValueError(f"unknown code system {system!r}; expected one of {CODE_SYSTEMS}")
    return _INDEX.get((system, _norm(system, code)))


def codes_to_classes(codes: Iterable[str], system: str) -> frozenset[str]:
    """All classes (of any label set) named by a record's codes."""
    found = (code_to_class(c, system) for c in codes)
    return frozenset(c for c in found if c is not None)


def detect_code_system(codes: Iterable[str]) -> str:
    """Guess whether a ``#Dx`` line holds SNOMED ids (all digits) or CPSC abbreviations."""
    codes = [c.strip() for c in codes if c.strip()]
    if codes and all(c.isdigit() for c in codes):
        return "snomed"
    return "cpsc_text"


def codes_to_ordered_classes(codes: Iterable[str], system: str) -> tuple[str, ...]:
    """The classes named by a record's codes in the order the source lists them, without repeats.

    Readers keep codes in source order (``REFERENCE.csv`` First/Second/Third_label, the ``#Dx:``
    line); the CPSC2018 score books a wrong prediction against the *first* label, so order matters.
    """
    found = (code_to_class(c, system) for c in codes)
    return tuple(dict.fromkeys(c for c in found if c is not None))


def multi_hot(classes: Iterable[str], label_set: str = "six") -> list[int]:
    """0/1 target vector of a record's classes in the order of ``label_set``."""
    present = set(classes)
    return [int(name in present) for name in label_names(label_set)]


class Labelled:
    """Mixin for anything carrying ``codes`` in ``code_system`` (a record, a catalog entry)."""

    codes: tuple[str, ...]
    code_system: str

    @property
    def classes(self) -> frozenset[str]:
        """The target classes (of any label set) the codes map to."""
        return codes_to_classes(self.codes, self.code_system)

    def targets(self, label_set: str = "six") -> list[int]:
        return multi_hot(self.classes, label_set)

    def ordered_targets(self, label_set: str = "six") -> tuple[int, ...]:
        """Indices (into ``label_names(label_set)``) of the record's classes, first label first.

        The order is the source's: ``REFERENCE.csv`` columns for original CPSC2018 files, the ``#Dx:``
        line for WFDB headers. Note that the PhysioNet/CinC 2020-2021 headers do not keep the original
        First_label (A0043 reads ``#Dx: AF,RBBB`` there, ``5,2`` i.e. RBBB first in REFERENCE.csv).
        """
        names = label_names(label_set)
        return tuple(names.index(c) for c in codes_to_ordered_classes(self.codes, self.code_system) if c in names)
