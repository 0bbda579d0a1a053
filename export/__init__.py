"""ONNX export, int8 static quantization, accuracy gate and report: ``python -m export``.

``export.metadata`` (the ONNX metadata contract) imports neither torch nor onnx, so the app can use it.
"""
