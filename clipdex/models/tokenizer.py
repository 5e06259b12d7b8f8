"""CLIP's byte-level BPE tokenizer, without torch.

The same algorithm and vocabulary as open_clip's ``SimpleTokenizer`` (the
vocabulary file is read from the installed open_clip package, which is not
imported), returning a numpy array, so the query path of a search needs
neither torch nor open_clip. A test checks it token for token against open_clip.

Its vocabulary and its text cleaning (ftfy, regex) come with open_clip, so it
serves exports made where open_clip is installed (clipdex's cache); exports
from the hub carry a ``tokenizer.json`` that the ``tokenizers`` library reads,
and a light install (no open_clip) is told which extra this one needs.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from clipdex.errors import ModelError
from clipdex.models.optional import TORCH_INSTALL, missing, torch_message

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
MERGE_COUNT = 49152 - 256 - 2
START, END = "<start_of_text>", "<end_of_text>"
WORD_PATTERN = r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


# What this tokenizer reads or imports: the vocabulary file (in open_clip) and the text cleaning.
NEEDS = ("open_clip", "ftfy", "regex")


def _check_installed(needs: tuple[str, ...] = NEEDS) -> None:
    """A light install has none of :data:`NEEDS`: say which extra brings them, not a bare import error."""
    absent = missing(needs)
    if absent:
        what = "CLIP's BPE tokenizer (for an export without a tokenizer.json)"
        raise ModelError(f"{torch_message(what)} (not installed here: {', '.join(absent)}). Or use an export "
                         "that carries its tokenizer.json: an Immich repository, or one written by "
                         "`clipdex models export`.")


def _vocab_path() -> Path:
    """open_clip's vocabulary file (read, never imported: :mod:`clipdex.models.clip_bpe` reads it too)."""
    _check_installed(("open_clip",))
    spec = importlib.util.find_spec("open_clip")
    path = Path(next(iter(spec.submodule_search_locations or []), "")) / VOCAB_FILE if spec else Path(VOCAB_FILE)
    if not path.is_file():
        raise ModelError(f"CLIP's BPE vocabulary is missing from open_clip's package (looked for {path}). "
                         f"Reinstall open_clip: {TORCH_INSTALL}")
    return path


@lru_cache(maxsize=1)
def _byte_alphabet() -> dict[int, str]:
    """Each byte mapped to a printable character (BPE works on printable strings)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class ClipTokenizer:
    """Texts -> (N, context_length) int64 token ids, as open_clip's default tokenizer."""

    def __init__(self, context_length: int = 77) -> None:
        _check_installed()
        import regex

        self.context_length = context_length
        with gzip.open(_vocab_path()) as vocab:
            lines = vocab.read().decode("utf-8").split("\n")[1:MERGE_COUNT + 1]
        merges = [tuple(line.split()) for line in lines]
        alphabet = list(_byte_alphabet().values())
        tokens = alphabet + [a + "</w>" for a in alphabet] + ["".join(m) for m in merges] + [START, END]
        self.ids = {token: i for i, token in enumerate(tokens)}
        self.rank = {pair: i for i, pair in enumerate(merges)}
        self.start_id, self.end_id = self.ids[START], self.ids[END]
        self.pattern = regex.compile(regex.escape(START) + "|" + regex.escape(END) + WORD_PATTERN,
                                     regex.IGNORECASE)
        self._cache: dict[str, list[str]] = {START: [START], END: [END]}

    @staticmethod
    def clean(text: str) -> str:
        import ftfy

        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        return " ".join(text.split()).lower()

    def _merge(self, word: str) -> list[str]:
        """Apply BPE merges to one pre-token, lowest rank first."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            ranked = [(self.rank.get(pair, -1), i) for i, pair in enumerate(zip(parts, parts[1:]))]
            candidates = [(r, i) for r, i in ranked if r >= 0]
            if not candidates:
                break
            best = min(candidates)[0]
            pair = next(p for p in zip(parts, parts[1:]) if self.rank.get(p) == best)
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        alphabet = _byte_alphabet()
        out: list[int] = []
        for piece in self.pattern.findall(self.clean(text)):
            word = "".join(alphabet[b] for b in piece.encode("utf-8"))
            out.extend(self.ids[token] for token in self._merge(word))
        return out

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        result = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            tokens = [self.start_id, *self.encode(text), self.end_id]
            if len(tokens) > self.context_length:
                tokens = tokens[:self.context_length]
                tokens[-1] = self.end_id
            result[row, :len(tokens)] = tokens
        return result
