"""Search spaces: small TOML files (``federated/search_spaces/*.toml``) read, checked and sampled.

A file is a list of parameters, one table each, sampled in file order::

    [lr]                     # a TrainConfig field (the training command's flag --lr)
    type = "float"           # float | int | categorical
    low = 3e-4
    high = 3e-3
    log = true               # sample on a log scale (float and int)

    [model_kwargs.dropout]   # a constructor argument of the model (resnet1d/resnet.py)
    type = "float"
    low = 0.0
    high = 0.5

    [proximal_mu]
    type = "float"
    low = 1e-3
    high = 1.0
    log = true
    when = { strategy = "fedprox" }   # only sampled when the trial's strategy is fedprox

Keys: ``type``; ``low``/``high`` (inclusive), optional ``step`` and ``log`` for float and int; ``choices``
for categorical (numbers, strings, booleans, or lists such as widths ``[16, 32, 64, 128]``); optional
``when``: ``{name = value}`` or ``{name = [values]}`` naming an earlier parameter or a TrainConfig field.

Everything is checked before the first trial: an unknown field or model argument, a key the type does
not take, a bad range, or a value the training command itself refuses (``TrainConfig.validate``, the
model's constructor, tried at both ends of each range) raises :class:`SpaceError` naming the file and
line. tomllib gives no line numbers, so :func:`find_line` looks the table up in the text.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from federated.config import TrainConfig

SPACES_DIR = Path(__file__).resolve().parents[1] / "search_spaces"

# Fields that define *what* is measured (data, split, labels, task, seed) or where it runs, not how a
# model trains: a search over them would compare trials on different problems. Set them with the
# training flags given to the search instead (they apply to every trial).
NOT_SEARCHABLE = frozenset({
    "data", "out", "resume", "device", "workers", "cache_dir", "mode", "labels", "task", "seed", "folds",
    "split_fractions", "max_windows_eval", "max_per_site", "ptbxl_rate", "model_kwargs", "amp",
})
# Lower bounds the dataclass does not check itself (the optimizer would fail mid-trial instead).
POSITIVE = frozenset({"lr", "pos_weight_cap", "alpha"})
NON_NEGATIVE = frozenset({"weight_decay", "proximal_mu"})

KEYS = {
    "float": {"type", "low", "high", "log", "step", "when"},
    "int": {"type", "low", "high", "log", "step", "when"},
    "categorical": {"type", "choices", "when"},
}


class SpaceError(ValueError):
    """A search-space file that cannot be used; the message starts with ``FILE:LINE:``."""


@dataclass(frozen=True)
class Param:
    """One searched setting. ``name`` is Optuna's parameter name: ``lr`` or ``model_kwargs.dropout``."""

    name: str
    kind: str  # float | int | categorical
    line: int
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    # Categorical choices as Optuna stores them (lists are JSON text: Optuna takes only scalars).
    choices: tuple = ()
    when: dict[str, tuple] = field(default_factory=dict)

    @property
    def is_model_kwarg(self) -> bool:
        return self.name.startswith("model_kwargs.")

    @property
    def key(self) -> str:
        """The TrainConfig field or model constructor argument the parameter sets."""
        return self.name.split(".", 1)[1] if self.is_model_kwarg else self.name

    def extremes(self) -> list:
        """Values to try when checking the space: both ends of a range, every choice (decoded)."""
        if self.kind == "categorical":
            return [decode(c) for c in self.choices]
        return [self.low, self.high]


@dataclass(frozen=True)
class SearchSpace:
    path: Path
    params: tuple[Param, ...]
    text: str  # the file as read: stored with the study, so that a resumed search can check it is the same

    def names(self) -> list[str]:
        return [p.name for p in self.params]


def encode(value: Any) -> Any:
    """A choice as Optuna can store it: scalars as they are, lists as compact JSON text."""
    return json.dumps(value) if isinstance(value, (list, tuple)) else value


def decode(value: Any) -> Any:
    """Inverse of :func:`encode` (JSON text that is a list becomes the list)."""
    if isinstance(value, str) and value.startswith("["):
        return json.loads(value)
    return value


_HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("([^"]*)"|'([^']*)'|[A-Za-z0-9_.-]+)\s*=""")


def _dotted(s: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in s.split("."))


def find_line(text: str, table: tuple[str, ...], key: str | None = None) -> int:
    """1-based line of the table ``table`` (``[a.b]`` or ``b = {...}`` inside ``[a]``), or of ``key``
    inside it; 0 if not found. Enough TOML for search-space files: headers, keys, inline tables."""
    section: tuple[str, ...] = ()
    table_line = 0
    for number, line in enumerate(text.splitlines(), 1):
        m = _HEADER.match(line)
        if m:
            section = _dotted(m.group(1))
            if section == table and not table_line:
                table_line = number
                if key is None:
                    return number
            continue
        m = _KEY.match(line)
        if not m:
            continue
        k = _dotted(m.group(2) if m.group(2) is not None else m.group(3) if m.group(3) is not None else m.group(1))
        full = section + k
        if full == table:  # an inline table `lr = { type = "float", ... }`: its keys are on this line
            if key is None or re.search(rf"\b{re.escape(key)}\s*=", line):
                return number
            table_line = table_line or number
        elif key is not None and full == table + (key,):
            return number
    return table_line


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _base_kind(tp: Any) -> type | None:
    """float, int, bool or str for a field's annotation (``int | None`` -> int); None for other types."""
    if tp in (float, int, bool, str):
        return tp
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if len(args) == 1 and args[0] in (float, int, bool, str) else None


def load_space(path: Path | str, base: TrainConfig) -> SearchSpace:
    """Read and check a search-space file against the training config ``base`` (its model)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpaceError(f"{path}: cannot read the search-space file: {exc.strerror or exc}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"at line (\d+)", str(exc))
        raise SpaceError(f"{path}{':' + m.group(1) if m else ''}: not valid TOML: {exc}") from None
    field_types = _field_types()
    params: list[Param] = []
    for top, value in doc.items():
        if top == "model_kwargs":
            if not isinstance(value, dict) or not value:
                raise SpaceError(f"{path}:{find_line(text, (top,))}: [model_kwargs] must hold one table per model argument, e.g. [model_kwargs.dropout]")
            for arg, spec in value.items():
                params.append(_param(path, text, f"model_kwargs.{arg}", ("model_kwargs", arg), spec, None))
            continue
        line = find_line(text, (top,))
        if top not in field_types:
            known = sorted(set(field_types) - NOT_SEARCHABLE)
            raise SpaceError(
                f"{path}:{line}: unknown parameter {top!r}: not a training setting (TrainConfig field); "
                f"searchable: {', '.join(known)}; model arguments go under [model_kwargs.NAME]"
            )
        if top in NOT_SEARCHABLE:
            raise SpaceError(
                f"{path}:{line}: {top!r} cannot be searched: it changes what is measured or where, not how a model "
                "trains; give it as a training flag to the search instead"
            )
        params.append(_param(path, text, top, (top,), value, _base_kind(field_types[top])))
    if not params:
        raise SpaceError(f"{path}: no parameter to search (one table per parameter, e.g. [lr])")
    space = SearchSpace(path=path, params=tuple(params), text=text)
    _check_when(space, field_types)
    _check_values(space, base)
    return space


def _param(path: Path, text: str, name: str, table: tuple[str, ...], spec: Any, field_kind: type | None) -> Param:
    line = find_line(text, table)
    where = f"{path}:{line}"
    if not isinstance(spec, dict):
        raise SpaceError(f"{where}: {name} must be a table ([{name}] with type = ...), got {spec!r}")
    kind = spec.get("type")
    if kind not in KEYS:
        raise SpaceError(f"{where}: {name}: type must be one of float, int, categorical; got {kind!r}")
    for k in spec:
        if k not in KEYS[kind]:
            raise SpaceError(
                f"{path}:{find_line(text, table, k) or line}: {name}: unknown key {k!r} for type {kind} "
                f"(allowed: {', '.join(sorted(KEYS[kind]))})"
            )
    when = spec.get("when", {})
    if "when" in spec and (not isinstance(when, dict) or not when):
        raise SpaceError(f"{path}:{find_line(text, table, 'when') or line}: {name}: when must be a table such as {{ strategy = \"fedprox\" }}")
    when_t = {k: tuple(v) if isinstance(v, list) else (v,) for k, v in when.items()}
    if field_kind is bool and kind != "categorical":
        raise SpaceError(f"{where}: {name} is a yes/no setting: use type = \"categorical\" with choices = [true, false]")
    if field_kind is str and kind != "categorical":
        raise SpaceError(f"{where}: {name} is a text setting: use type = \"categorical\" with choices = [...]")
    if field_kind is int and kind == "float":
        raise SpaceError(f"{where}: {name} is a whole number: use type = \"int\"")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{path}:{find_line(text, table, 'choices') or line}: {name}: choices must be a non-empty list")
        enc = tuple(encode(c) for c in choices)
        if len(set(map(repr, enc))) != len(enc):
            raise SpaceError(f"{path}:{find_line(text, table, 'choices') or line}: {name}: choices repeat a value: {choices}")
        for c in choices:
            if field_kind is not None and not _fits(c, field_kind):
                raise SpaceError(f"{path}:{find_line(text, table, 'choices') or line}: {name}: choice {c!r} is not a {field_kind.__name__}")
        return Param(name, kind, line, choices=enc, when=when_t)
    for k in ("low", "high"):
        if k not in spec:
            raise SpaceError(f"{where}: {name}: type {kind} needs low and high")
    low, high, step, log = spec["low"], spec["high"], spec.get("step"), spec.get("log", False)
    number = int if kind == "int" else (int, float)
    for k, v in (("low", low), ("high", high), ("step", step)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, number) or not math.isfinite(v)):
            raise SpaceError(f"{path}:{find_line(text, table, k) or line}: {name}: {k} must be a finite {'whole ' if kind == 'int' else ''}number, got {v!r}")
    if not isinstance(log, bool):
        raise SpaceError(f"{path}:{find_line(text, table, 'log') or line}: {name}: log must be true or false, got {log!r}")
    if not low < high:
        raise SpaceError(f"{path}:{find_line(text, table, 'high') or line}: {name}: bad range: low {low} must be below high {high}")
    if log and low <= 0:
        raise SpaceError(f"{path}:{find_line(text, table, 'low') or line}: {name}: a log-scale range needs low > 0, got {low}")
    if step is not None and (step <= 0 or log):
        raise SpaceError(f"{path}:{find_line(text, table, 'step') or line}: {name}: step must be positive and cannot combine with log")
    if step is not None and not math.isclose(((high - low) / step) % 1, 0, abs_tol=1e-9) and not math.isclose(((high - low) / step) % 1, 1, abs_tol=1e-9):
        raise SpaceError(f"{path}:{find_line(text, table, 'step') or line}: {name}: high - low ({high - low}) is not a multiple of step {step}")
    if kind == "float":
        low, high, step = float(low), float(high), None if step is None else float(step)
    return Param(name, kind, line, low=low, high=high, step=step, log=log, when=when_t)


def _fits(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind) and not isinstance(value, bool)


def _check_when(space: SearchSpace, field_types: dict[str, Any]) -> None:
    seen: set[str] = set()
    for p in space.params:
        for name in p.when:
            if name not in seen and name not in field_types:
                raise SpaceError(
                    f"{space.path}:{find_line(space.text, tuple(p.name.split('.')), 'when') or p.line}: {p.name}: "
                    f"when names {name!r}, which is neither an earlier parameter nor a training setting"
                )
        seen.add(p.name)


def _check_values(space: SearchSpace, base: TrainConfig) -> None:
    """Try both ends of every range (and every choice) the way a trial would use them."""
    from resnet1d import create_model

    model = base.model
    if getattr(base, "task", "six") == "beats":  # the beat task builds its own network by default
        from federated.beats.train import beat_model_name

        model = beat_model_name(base)
    for p in space.params:
        for value in p.extremes():
            where = f"{space.path}:{p.line}: {p.name} = {value!r}"
            if p.is_model_kwarg:
                try:
                    create_model(model, **{**base.model_kwargs, p.key: value})
                except (ValueError, TypeError) as exc:
                    if "unexpected keyword argument" in str(exc):
                        raise SpaceError(
                            f"{space.path}:{p.line}: unknown parameter {p.name!r}: the model {model!r} takes no argument "
                            f"{p.key!r}; it takes: {', '.join(_model_arguments(model))}"
                        ) from None
                    raise SpaceError(f"{where}: the model {model!r} refuses it: {exc}") from None
                continue
            if p.key in POSITIVE and not value > 0:
                raise SpaceError(f"{where}: must be positive")
            if p.key in NON_NEGATIVE and value < 0:
                raise SpaceError(f"{where}: must not be negative")
            try:
                dataclasses.replace(base, **{p.key: value}).validate()
            except ValueError as exc:
                raise SpaceError(f"{where}: {exc}") from None


def _model_arguments(model: str) -> list[str]:
    """Constructor arguments of a registered model's class (what ``--model-kwargs`` may set)."""
    import inspect

    from resnet1d import create_model

    params = inspect.signature(type(create_model(model)).__init__).parameters
    return [n for n, q in params.items() if n != "self" and q.kind not in (q.VAR_KEYWORD, q.VAR_POSITIONAL)]


def active(p: Param, chosen: dict[str, Any], base: TrainConfig) -> bool:
    """Whether ``p``'s ``when`` conditions hold for the values chosen so far (else the base config's)."""
    for name, allowed in p.when.items():
        value = chosen[name] if name in chosen else getattr(base, name, None)
        if decode(value) not in [decode(a) for a in allowed]:
            return False
    return True


def suggest(trial, space: SearchSpace, base: TrainConfig) -> dict[str, Any]:
    """Sample the trial's parameters (Optuna's define-by-run API), in file order; Optuna's raw values."""
    chosen: dict[str, Any] = {}
    for p in space.params:
        if not active(p, chosen, base):
            continue
        if p.kind == "categorical":
            chosen[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.kind == "int":
            chosen[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            chosen[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
    return chosen


def apply(base: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """The training config of a trial: ``base`` with the sampled values (model arguments merged in)."""
    changes: dict[str, Any] = {}
    kwargs = dict(base.model_kwargs)
    for name, raw in params.items():
        value = decode(raw)
        if name.startswith("model_kwargs."):
            kwargs[name.split(".", 1)[1]] = value
        else:
            changes[name] = value
    return dataclasses.replace(base, model_kwargs=kwargs, **changes)


def default_space_file(mode: str, task: str) -> Path:
    """``beats.toml`` for the beat task, else ``central.toml`` or ``federated.toml`` by mode."""
    return SPACES_DIR / ("beats.toml" if task == "beats" else f"{mode}.toml")


def field_names() -> set[str]:
    return {f.name for f in fields(TrainConfig)}
