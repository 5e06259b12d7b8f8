"""What identifies a model and its vectors (:class:`ModelSpec`), apart from how it is named or run.

A leaf module: the registry, the Transformers checkpoint resolver and every runtime
import it, and it imports none of them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from clipdex.fileio import write_atomically
from clipdex.settings import cache_dir

FINGERPRINT_BYTES = 16  # hex digits of the weights' sha256 kept in a model key
HF_PREFIX = "hf:"  # --model hf:REPO or hf:/path/to/save_pretrained/folder
ONNX_PREFIX = "onnx:"  # --model onnx:REPO or onnx:/path/to/export (the hub layout, clipdex.models.bundle)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build a model and to tell its vectors apart.

    For an open_clip model (``family`` 'open_clip'): ``arch`` is an open_clip
    architecture; ``pretrained`` a tag whose preprocessing (mean, std, QuickGELU)
    applies; ``weights`` a local checkpoint that replaces the download; ``config`` a
    custom architecture (an open_clip model-config dict).

    For a Transformers checkpoint (``family`` 'hf', :mod:`clipdex.models.hf`): ``arch``
    is 'hf'; ``pretrained`` the hub repository, or ``weights`` a local
    ``save_pretrained`` folder with ``weights_sha256`` the fingerprint of its files.

    For a ready ONNX export (``family`` 'onnx', ``--model onnx:…``): ``arch`` is 'onnx';
    ``pretrained`` the hub repository, or ``weights`` the local folder; ``identity`` the key
    of the model it was exported from (its clipdex.json, or Immich's ``ARCH__TAG`` name), so
    its vectors share an index with that model's from any other source.

    ``onnx`` (any family): a hub repository or folder holding a ready ONNX export of this
    same model (the registry's Immich sources), fetched where exporting would need torch.
    """

    name: str
    arch: str
    pretrained: str | None = None
    weights: str | None = None
    weights_sha256: str | None = None
    config: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    family: str = "open_clip"
    identity: str | None = None
    onnx: str | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        """Identity of the vectors this model makes: architecture plus weights."""
        if self.identity:
            return self.identity
        if self.weights_sha256:
            return f"{self.arch}@sha256:{self.weights_sha256[:FINGERPRINT_BYTES]}"
        if self.family == "hf":
            return f"{HF_PREFIX}{self.pretrained}"
        return f"{self.arch}/{self.pretrained}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        return cls(**json.loads(text))


def fingerprint_weights(path: str) -> str:
    """sha256 of a weights file, remembered by (path, size, mtime) to hash it once."""
    stat = os.stat(path)
    memo_file = cache_dir() / "weights-sha256.json"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
    known = memo.get(path)
    if known and known.get("stamp") == stamp:
        return str(known["sha256"])
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    memo[path] = {"stamp": stamp, "sha256": digest.hexdigest()}
    try:
        write_atomically(memo_file, json.dumps(memo).encode())
    except OSError:
        pass  # a cache; failing to write it only costs a re-hash next time
    return digest.hexdigest()
