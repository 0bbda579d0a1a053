"""One registry: ``@register_model`` fills it, ``create_model`` builds from it (timm-style)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from resnet1d.layers import check_positive

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a factory ``fn(*, num_classes, in_leads, **kwargs)`` under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_MODELS)


def create_model(name: str, *, num_classes: int = 6, in_leads: int = 12, **kwargs) -> nn.Module:
    """Build a registered model; output ``[batch, num_classes]`` logits for input ``[batch, in_leads, T]``."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    check_positive(num_classes=num_classes, in_leads=in_leads)
    try:
        return _MODELS[name](num_classes=num_classes, in_leads=in_leads, **kwargs)
    except TypeError as exc:
        raise ValueError(f"bad arguments for model {name!r}: {exc}") from None
