"""ECG-Lite model zoo. Every model: input float32 [batch, leads, samples] (any length), output
[batch, num_classes] logits; built with ``create_model(name, num_classes=6, in_leads=12, **kwargs)``."""

from resnet1d import alexnet, beatnet, resnet, rnn, squeezenet  # noqa: F401  (importing registers the models)
from resnet1d.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
