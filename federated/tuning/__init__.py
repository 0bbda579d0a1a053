"""Parts of the hyperparameter search (``python -m federated.tune``): search spaces, outputs, study upkeep."""
