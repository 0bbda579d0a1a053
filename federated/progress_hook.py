"""A place where a running training reports its validation figure per epoch or per round.

Training code calls :func:`report` after each validation (central: ``federated.central.fit`` per epoch;
federated: the server's per-round evaluation). Nothing listens by default, so a plain training run is
unchanged. A caller that wants the figures while the run goes on (the hyperparameter search prunes
hopeless trials with them, ``federated.tune``) installs a listener for the duration of one run::

    with progress_hook.listening(lambda step, value: ...):
        train.run(cfg)

The listener may raise (Optuna's ``TrialPruned``) to stop the run; the exception travels out of the
training call unchanged. One listener at a time, per process: a run is single-threaded at this level.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

Listener = Callable[[int, float], None]

# The current listener (None = nobody listens). A module-level slot because the training entry points
# (train.run -> cv.run_cv -> central.fit, or the Flower ServerApp) take a TrainConfig, not callbacks;
# it is only ever set inside `listening`, which restores the previous value.
_listener: Listener | None = None


def report(step: int, value: float) -> None:
    """Report the validation figure ``value`` after epoch/round ``step`` (1-based); no-op if nobody listens."""
    if _listener is not None:
        _listener(int(step), float(value))


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Install ``listener(step, value)`` for the duration of the ``with`` block."""
    global _listener
    previous, _listener = _listener, listener
    try:
        yield
    finally:
        _listener = previous
