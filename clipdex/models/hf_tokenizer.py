"""A Transformers checkpoint's own tokenizer (its tokenizer.json), run by the ``tokenizers`` library.

The ONNX path encodes queries without torch or transformers: the tokenizer.json
saved beside an export is the one Transformers itself runs for that checkpoint
(its fast tokenizer's backend), and :class:`HfTokenizer` truncates and pads as the
model's processor does: SigLIP to its full length, CLIP to the longest text with
an attention mask. A test checks it token for token against ``AutoTokenizer``.

Some models clean a text before their tokenizer sees it (open_clip's ``tokenizer_kwargs``
``clean``, which Immich's exports keep in config.json): :func:`clean_text` does that here
(``text_clean`` in an export's facts).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

TOKENIZER_FILE = "tokenizer.json"
PADDINGS = ("longest", "max_length")
TEXT_INPUTS = ("input_ids", "attention_mask")  # what a text tower may take, in that order
TEXT_CLEANS = (None, "whitespace", "canonicalize")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def clean_text(text: str, clean: str | None) -> str:
    """``text`` as the model's own tokenizer cleans it first: 'whitespace' collapses runs of
    whitespace (open_clip's and Immich's ``whitespace_clean``); 'canonicalize' is open_clip's
    ``canonicalize_text`` for SigLIP's webli models ('_' to a space, ASCII punctuation removed,
    lower-cased, whitespace collapsed). Neither does open_clip's ftfy repair and HTML unescaping
    (ftfy is not a dependency): a text those would change may tokenize differently."""
    if clean == "whitespace":
        return " ".join(text.split())
    if clean == "canonicalize":
        return " ".join(text.replace("_", " ").translate(_PUNCTUATION).lower().split())
    return text


class HfTokenizer:
    """Texts -> the feeds of an exported text tower: int64 ``input_ids`` (and
    ``attention_mask`` where the checkpoint's tokenizer gives one), truncated to
    ``context_length`` tokens and padded per ``padding``."""

    def __init__(self, path: Path | str, context_length: int, padding: str, pad_id: int, pad_token: str,
                 inputs: Sequence[str] = TEXT_INPUTS, padding_side: str = "right",
                 truncation_side: str = "right", text_clean: str | None = None) -> None:
        from tokenizers import Tokenizer

        if padding not in PADDINGS:
            raise ValueError(f"padding {padding!r}: expected one of {', '.join(PADDINGS)}")
        unknown = set(inputs) - set(TEXT_INPUTS)
        if "input_ids" not in inputs or unknown:
            raise ValueError(f"text inputs {list(inputs)}: expected input_ids and optionally attention_mask")
        if text_clean not in TEXT_CLEANS:
            raise ValueError(f"text_clean {text_clean!r}: expected one of {TEXT_CLEANS}")
        self.text_clean = text_clean
        self.context_length = int(context_length)
        self.padding = padding
        self.inputs = tuple(name for name in TEXT_INPUTS if name in inputs)
        self._tokenizer = Tokenizer.from_file(str(path))
        # As Transformers sets its backend for `truncation=True, max_length=L, padding=...`.
        self._tokenizer.enable_truncation(max_length=self.context_length, direction=truncation_side)
        self._tokenizer.enable_padding(direction=padding_side, pad_id=int(pad_id), pad_token=pad_token,
                                       length=self.context_length if padding == "max_length" else None)

    @classmethod
    def from_export(cls, folder: Path, meta: dict[str, Any]) -> "HfTokenizer":
        """The tokenizer an export's meta.json describes, over the tokenizer.json in ``folder``
        (written by :func:`clipdex.models.runtimes.hf_torch.export`)."""
        return cls(folder / TOKENIZER_FILE, meta["context_length"], meta["text_padding"], meta["pad_id"],
                   meta["pad_token"], meta.get("text_inputs", TEXT_INPUTS), meta.get("padding_side", "right"),
                   meta.get("truncation_side", "right"), meta.get("text_clean"))

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        encodings = self._tokenizer.encode_batch([clean_text(text, self.text_clean) for text in texts])
        width = len(encodings[0].ids) if encodings else 0
        feeds = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(texts), width)}
        if "attention_mask" in self.inputs:
            feeds["attention_mask"] = np.array([e.attention_mask for e in encodings],
                                               dtype=np.int64).reshape(len(texts), width)
        return feeds
