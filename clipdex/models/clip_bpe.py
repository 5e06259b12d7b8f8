"""CLIP's byte-level BPE as a ``tokenizers`` tokenizer.json, made from open_clip's vocabulary.

An export written by ``clipdex models export`` is read without open_clip (and, on a base
install, without its vocabulary file), so its text tokenizer travels with it as a
tokenizer.json that the ``tokenizers`` library runs. This builds one with the structure of
Transformers' ``CLIPTokenizerFast`` (the file Immich's exports carry for OpenAI and LAION
models): NFC, whitespace collapsed, lower-cased; split by CLIP's word pattern, then bytes
mapped to printable characters; BPE with ``</w>`` ending each word; the start and end tokens
added around the text, which truncation keeps. The vocabulary is open_clip's
(``bpe_simple_vocab_16e6.txt.gz``, found beside the installed package as
:mod:`clipdex.models.tokenizer` finds it), so the ids are open_clip's.

A test checks it token for token against open_clip's ``SimpleTokenizer``. What it does not do
is open_clip's ftfy repair and HTML unescaping (``ftfy.fix_text``, ``html.unescape``), which
the ``tokenizers`` library cannot express: a text those would change (mojibake, ``&amp;``) may
tokenize differently. The special tokens carry Transformers' names (``<|startoftext|>``,
``<|endoftext|>``; open_clip calls them ``<start_of_text>``, ``<end_of_text>``) with the same
ids, so the file equals the hub's CLIP tokenizer.json in all but its padding token.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import TYPE_CHECKING

from clipdex.models.tokenizer import MERGE_COUNT, _byte_alphabet, _vocab_path

if TYPE_CHECKING:
    from tokenizers import Tokenizer

START, END = "<|startoftext|>", "<|endoftext|>"
# Transformers' CLIP pattern: its special tokens, the contractions, letters, single digits, other symbols.
SPLIT_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# open_clip pads with id 0 (the token "!"); with argmax pooling any padding after the end token
# gives the same vectors, and for other pooling only open_clip's own padding does.
PAD_ID = 0
PAD_TOKEN = "!"


def vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """open_clip's vocabulary (token -> id, the ids of ``SimpleTokenizer``) and its merges, in rank order."""
    with gzip.open(_vocab_path()) as vocab:
        lines = vocab.read().decode("utf-8").split("\n")[1:MERGE_COUNT + 1]
    merges = [(a, b) for a, b in (line.split() for line in lines)]
    alphabet = list(_byte_alphabet().values())
    tokens = alphabet + [a + "</w>" for a in alphabet] + [a + b for a, b in merges] + [START, END]
    return {token: i for i, token in enumerate(tokens)}, merges


def build(context_length: int = 77) -> "Tokenizer":
    """CLIP's tokenizer for the ``tokenizers`` library: texts truncated to ``context_length``
    tokens with the end token kept (open_clip's rule), no padding (the reader pads)."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    vocab, merges = vocabulary()
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                              end_of_word_suffix="</w>", fuse_unk=False, unk_token=END))
    tokenizer.normalizer = normalizers.Sequence(  # type: ignore[assignment]
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([  # type: ignore[assignment]
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()  # type: ignore[assignment]
    tokenizer.add_special_tokens([START, END])
    tokenizer.post_processor = processors.RobertaProcessing(  # type: ignore[assignment]
        (END, vocab[END]), (START, vocab[START]), trim_offsets=False, add_prefix_space=False)
    # Truncation counts the two added tokens: the text keeps context_length - 2 tokens, then the
    # end token, as open_clip's cut (which overwrites the last kept token with the end token).
    tokenizer.enable_truncation(max_length=int(context_length))
    return tokenizer


def write(path: Path, context_length: int = 77) -> Path:
    """Write :func:`build`'s tokenizer.json to ``path``; returns ``path``."""
    build(context_length).save(str(path))
    return path


def config(context_length: int = 77) -> dict[str, object]:
    """The tokenizer_config.json that goes beside it (what Immich's reader takes: the pad token)."""
    return {"tokenizer_class": "CLIPTokenizer", "model_max_length": int(context_length),
            "bos_token": START, "eos_token": END, "unk_token": END, "pad_token": PAD_TOKEN,
            "do_lower_case": True, "clean_up_tokenization_spaces": False}
