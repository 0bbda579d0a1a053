"""ECG-Lite training: central, local and federated (Flower) training, evaluation, checkpoints."""
