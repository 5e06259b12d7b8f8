"""The runtimes, one module each, listed in :data:`clipdex.models.factory.RUNTIMES`.

Each module exposes ``RUNTIME`` (a :class:`~clipdex.models.encoder.Runtime`) and
imports its library (torch, onnxruntime, openvino) only when an encoder is built.
The torch runtimes of each model family also export it to ONNX (``export``) and
give a torch encoder for texts (``torch_encoder``).
"""

# Each model family (ModelSpec.family) and its torch runtime, which builds it
# from its weights and exports it to ONNX for the other runtimes. Named, not imported: importing
# the package imports no runtime.
FAMILY_RUNTIMES = {"open_clip": "clipdex.models.runtimes.openclip_torch", "hf": "clipdex.models.runtimes.hf_torch"}
