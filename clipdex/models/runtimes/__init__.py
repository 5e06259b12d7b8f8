"""The runtimes, one module each, listed in :data:`clipdex.models.factory.RUNTIMES`.

Each module exposes ``RUNTIME`` (a :class:`~clipdex.models.encoder.Runtime`) and
imports its library (torch, onnxruntime, openvino) only when an encoder is built.
The torch runtimes of each model family also export it to ONNX (``export``) and
give a torch encoder for texts (``torch_encoder``).
"""
