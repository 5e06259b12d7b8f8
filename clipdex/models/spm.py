"""SigLIP's sentencepiece tokenizer (spiece.model) as a ``tokenizers`` tokenizer.json.

Hub SigLIP checkpoints (google/siglip-base-patch16-224, ...) ship a sentencepiece
``spiece.model`` for Transformers' ``SiglipTokenizer`` and no tokenizer.json, so
their queries would need torch, transformers and sentencepiece. :func:`convert`
builds the same tokenizer for the ``tokenizers`` library, which the ONNX path runs
(:class:`~clipdex.models.hf_tokenizer.HfTokenizer`): the ids ``SiglipTokenizer``
gives, checked token for token by the tests. What SiglipTokenizer does, and where
each step lands here (all but the last two in the normalizer):

- splits ``'▁' + text.replace('▁', ' ')`` on its special tokens (``</s>``, ``<unk>``),
  which stand aside as private-use sentinels while the rest is canonicalised;
- canonicalises each piece between them as big_vision does (lower case, no ASCII
  punctuation, whitespace runs to one space, stripped);
- encodes each piece with sentencepiece: its normaliser (the precompiled NFKC
  charsmap, extra spaces removed, spaces as ``▁``), the ``▁`` before the first piece
  only (an ``<unk>`` prefix it strips keeps the others bare), and its Unigram model:
  here a Unigram model of the same pieces and scores, the special tokens being
  pre-tokens of their own;
- appends ``</s>`` unless the text already ends in one: the post-processor (and a
  normalizer step dropping a final ``</s>`` of the text).

Reading spiece.model needs the ``sentencepiece`` package (with ``protobuf``), at
export time only; the tokenizer.json needs neither. Importing this module imports
neither torch nor transformers.

Known differences (ids, unless said): a text that still ends in a ``</s>`` of its own
after truncation gets an attention mask one longer (same ids; the hub's SigLIP
tokenizers give no mask); stacks of combining marks on compatibility characters
(``'ﬁ'`` + an accent) and a combining mark right after a special token, where
sentencepiece's charsmap and NFKC part; characters newer than the exporting Python's
Unicode; texts holding the private-use characters used as sentinels here.
"""

from __future__ import annotations

import string
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipdex.errors import ModelError, first_line

if TYPE_CHECKING:
    from tokenizers import Tokenizer

SPIECE_FILE = "spiece.model"
SPIECE_UNDERLINE = "▁"
INSTALL_HINT = "pip install sentencepiece protobuf (or pip install 'clipdex[hf]')"
CONVERT_HINT = "Save the checkpoint's tokenizer as a fast one (tokenizer.json) into its folder."
# sentencepiece's ModelProto: SentencePiece.Type and TrainerSpec.model_type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
UNIGRAM = 1
# Python's str.lower() makes a word-final capital sigma 'ς' (a cased letter before it, none after,
# case-ignorable marks between: up to 16 here); tokenizers' Lowercase makes every 'Σ' a 'σ', so
# final ones are made first.
FINAL_SIGMA = (r"(?<=[\p{Cased}&&\P{Case_Ignorable}][\p{Case_Ignorable}]{0,16})"
               r"Σ(?![\p{Case_Ignorable}]*+\p{Cased})")
# Private-use characters (no case, not punctuation, not whitespace, left alone by NFKC) standing in
# for the special tokens while the text is canonicalised, and for characters kept from NFKC.
SPECIAL_SENTINELS = 0x10FF00
KEPT_SENTINELS = 0x100000
MOST_KEPT = 256  # more characters that NFKC would change wrongly: the charsmap is not NFKC's


@dataclass(frozen=True)
class SpecialToken:
    """A token ``SiglipTokenizer`` splits texts on before anything else (found as written), with its id."""

    content: str
    id: int


def _escape(text: str) -> str:
    """``text`` as an Oniguruma regex (tokenizers' regex engine) matching it as written."""
    return "".join(f"\\x{{{ord(c):x}}}" for c in text)


def _char_class(chars: str) -> str:
    return f"[{_escape(chars)}]"


def _alternation(texts: Sequence[str]) -> str:
    return "|".join(_escape(t) for t in sorted(texts, key=len, reverse=True))


def python_whitespace() -> str:
    """Every character Python's ``re`` ``\\s`` and ``str.strip`` count as whitespace (which
    canonicalize_text collapses): more than tokenizers' ``\\s``, e.g. U+001C..U+001F."""
    return "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())


# -- the normalizer ---------------------------------------------------------------

def canonicalizers(specials: Sequence[str], do_lower_case: bool) -> list[Any]:
    """Normalizers doing SiglipTokenizer's ``tokenize`` up to sentencepiece: ``text.replace('▁', ' ')``
    split on the special tokens, and each piece between them canonicalised as big_vision does
    (lower case, no ASCII punctuation, whitespace runs to one space, stripped). The special tokens
    are sentinels meanwhile (:func:`sentencepiece_normalizers` puts them back)."""
    from tokenizers import Regex, normalizers

    by_length = sorted(enumerate(specials), key=lambda item: len(item[1]), reverse=True)
    steps: list[Any] = [normalizers.Replace(token, chr(SPECIAL_SENTINELS + i)) for i, token in by_length]
    steps.append(normalizers.Replace(SPIECE_UNDERLINE, " "))
    if do_lower_case:
        steps += [normalizers.Replace(Regex(FINAL_SIGMA), "ς"), normalizers.Lowercase()]
    steps += [normalizers.Replace(Regex(_char_class(string.punctuation)), ""),
              normalizers.Replace(Regex(_char_class(python_whitespace()) + "+"), " ")]
    if specials:  # each piece stripped: no space beside a special token (runs are single spaces by now)
        marks = _char_class("".join(chr(SPECIAL_SENTINELS + i) for i in range(len(specials))))
        steps.append(normalizers.Replace(Regex(f" (?={marks})|(?<={marks}) "), ""))
    steps.append(normalizers.Replace(Regex(r"\A | \z"), ""))
    return steps


def charsmap_normalizers(charsmap: bytes) -> list[Any]:
    """Normalizers applying sentencepiece's precompiled charsmap as sentencepiece does. tokenizers'
    ``Precompiled`` maps single characters right, but a short grapheme cluster by its shortest
    mapped prefix, dropping the rest (a fullwidth '！' with a combining accent loses the accent)
    and leaves decomposed Hangul alone. For an NFKC charsmap (SigLIP's nmt_nfkc), NFKC first
    leaves it little but single characters; the few characters NFKC maps otherwise than the
    charsmap are kept from it (:func:`nfkc_exceptions`)."""
    from tokenizers import normalizers

    precompiled = normalizers.Precompiled(charsmap)
    kept = nfkc_exceptions(precompiled)
    if len(kept) > MOST_KEPT:  # not an NFKC charsmap: only its own mapping
        return [precompiled]
    hide = [normalizers.Replace(c, chr(KEPT_SENTINELS + i)) for i, c in enumerate(kept)]
    show = [normalizers.Replace(chr(KEPT_SENTINELS + i), c) for i, c in enumerate(kept)]
    return [*hide, normalizers.NFKC(), *show, precompiled]


def nfkc_exceptions(precompiled: Any) -> list[str]:
    """The characters to keep from NFKC before the charsmap: those it maps otherwise than after NFKC
    (NFKC makes U+FF5E '～' a '~', nmt_nfkc leaves it), and those NFKC makes combining marks, which
    NFKC then composes with the character before while sentencepiece maps them on their own
    (U+0344, Tibetan vowel signs, halfwidth kana voicing marks)."""
    import unicodedata

    from tokenizers import normalizers

    chars = [chr(c) for c in range(1, sys.maxunicode + 1) if not 0xD800 <= c < 0xE000]
    # One call for all: NUL, a starter, keeps each character's NFKC its own.
    folded = normalizers.NFKC().normalize_str("\x00".join(chars)).split("\x00")
    return [c for c, f in zip(chars, folded) if c != f and (
        (f and unicodedata.combining(f[0])) or precompiled.normalize_str(c) != precompiled.normalize_str(f))]


def sentencepiece_normalizers(proto: Any, specials: Sequence[str], eos_token: str, unk_token: str) -> list[Any]:
    """Normalizers doing what SiglipTokenizer has sentencepiece do to each canonical piece: a space
    (``▁``) before the first piece only; the charsmap (which may make spaces of other characters);
    space runs to one and none at a piece's end (so an empty first piece leaves nothing), a space
    kept at the start of a piece after a special token; spaces written ``▁``. The special tokens
    come back as written (after the charsmap, which sees the pieces apart as sentencepiece does).
    Then SiglipTokenizer's own quirks: the unknown characters starting a piece after a special
    token dropped where its ``<unk>`` prefix ends in an unknown one (sentencepiece fuses them into
    the piece it strips), and one ``</s>`` ending the text dropped (it appends its own only where
    the text ends in none)."""
    from tokenizers import Regex, normalizers

    spec = proto.normalizer_spec
    steps: list[Any] = [normalizers.Prepend(" ")]
    if spec.precompiled_charsmap:
        steps += charsmap_normalizers(spec.precompiled_charsmap)
    steps += [normalizers.Replace(chr(SPECIAL_SENTINELS + i), token) for i, token in enumerate(specials)]
    if spec.remove_extra_whitespaces:
        ends = f"(?={_alternation(specials)})|" if specials else ""
        steps += [normalizers.Replace(Regex(" {2,}"), " "), normalizers.Replace(Regex(f" +(?:{ends}\\z)"), "")]
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", SPIECE_UNDERLINE))
    unknown = _unknown_class(proto)
    if specials and unknown and unk_token and _is_unknown(unk_token[-1], proto):
        after, special = f"(?<={_alternation(specials)})", f"(?!{_alternation(specials)})"
        steps.append(normalizers.Replace(Regex(f"{after}(?:{special}{unknown})+"), ""))
    steps.append(normalizers.Replace(Regex(_escape(eos_token) + r"\z"), ""))
    return steps


def _single_pieces(proto: Any) -> set[str]:
    return {p.piece for p in proto.pieces if p.type in (NORMAL, USER_DEFINED) and len(p.piece) == 1}


def _is_unknown(char: str, proto: Any) -> bool:
    return not proto.trainer_spec.byte_fallback and char not in _single_pieces(proto)


def _unknown_class(proto: Any) -> str | None:
    """A regex class of the characters sentencepiece encodes as ``<unk>`` (no piece of their own;
    none with byte fallback)."""
    if proto.trainer_spec.byte_fallback:
        return None
    return "[^" + _escape("".join(sorted(_single_pieces(proto)))) + "]"


# -- the model -----------------------------------------------------------------------

def read_model(path: Path) -> Any:
    """The ModelProto of a sentencepiece model file, read with the sentencepiece package's protobuf
    schema; a :class:`ModelError` saying what to install, or that the file is not one."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as e:
        raise ModelError(f"reading the sentencepiece tokenizer {path} needs the sentencepiece and protobuf "
                         f"packages ({first_line(e)}): {INSTALL_HINT}.") from None
    from google.protobuf.message import DecodeError

    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]
    try:
        proto.ParseFromString(path.read_bytes())
    except OSError as e:
        raise ModelError(f"cannot read {path}: {first_line(e)}. Download the checkpoint again.") from None
    except DecodeError as e:
        raise ModelError(f"{path} is not a sentencepiece model ({first_line(e)}). Download the checkpoint "
                         "again.") from None
    if not proto.pieces:
        raise ModelError(f"{path} holds no sentencepiece pieces. Download the checkpoint again.")
    return proto


def _vocabulary(proto: Any, specials: Sequence[str]) -> list[tuple[str, float]]:
    """(piece, score) by id. sentencepiece never finds control or unused pieces in text; tokenizers'
    Unigram would find one that survives canonicalisation (no punctuation in it), so such a piece is
    renamed to one that cannot be (its id is never produced from text either way). The special
    tokens keep their names: the normalizer puts them back for the model to find."""
    vocab = []
    for piece in proto.pieces:
        name = piece.piece
        if piece.type in (CONTROL, UNUSED) and name not in specials and not set(name) & set(string.punctuation):
            name = f"<{name}>"
        vocab.append((name, float(piece.score)))
    return vocab


def convert(model_file: Path | str, eos_token: str = "</s>", specials: Sequence[SpecialToken] = (),
            do_lower_case: bool = True, unk_token: str = "<unk>") -> "Tokenizer":
    """The ``tokenizers`` Tokenizer giving the ids of a SiglipTokenizer over ``model_file`` (its
    spiece.model): ``specials`` are the tokens it splits texts on (``</s>`` and ``<unk>``, and any
    added ones), ``eos_token`` the one it appends. No truncation or padding is set (the caller sets
    them, as :class:`~clipdex.models.hf_tokenizer.HfTokenizer` does)."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    path = Path(model_file)
    proto = read_model(path)
    if proto.trainer_spec.model_type != UNIGRAM:
        raise ModelError(f"{path} is a sentencepiece model of type {proto.trainer_spec.model_type}, not Unigram "
                         f"(SigLIP's); clipdex converts Unigram ones. {CONVERT_HINT}")
    names = [t.content for t in sorted(specials, key=lambda t: t.id)]
    tokenizer = Tokenizer(Unigram(_vocabulary(proto, names), unk_id=int(proto.trainer_spec.unk_id),
                                  byte_fallback=bool(proto.trainer_spec.byte_fallback)))
    tokenizer.normalizer = normalizers.Sequence(canonicalizers(names, do_lower_case)
                                                + sentencepiece_normalizers(proto, names, eos_token, unk_token))
    # Each special token (and each piece the spm model defines by hand, which it emits whole before
    # its Viterbi) is a pre-token of its own, which the model reads as its piece (score 0, above any
    # split of it). The rest is not split: sentencepiece's Viterbi runs over a whole piece of text,
    # as the Unigram model's does over a pre-token.
    whole = names + [p.piece for p in proto.pieces if p.type == USER_DEFINED and p.piece not in names]
    if whole:
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(_alternation(whole)), behavior="isolated")
    for token in specials:
        if [t.id for t in tokenizer.model.tokenize(token.content)] != [token.id]:
            raise ModelError(f"the special token {token.content!r} (id {token.id}) of the tokenizer over {path} is "
                             f"not one of its pieces; clipdex cannot convert it. {CONVERT_HINT}")
    eos_id = tokenizer.token_to_id(eos_token)
    if eos_id is None:
        raise ModelError(f"{path} has no piece {eos_token!r} (the tokenizer's end of text). {CONVERT_HINT}")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos_token}", pair=f"$A {eos_token} $B {eos_token}", special_tokens=[(eos_token, eos_id)])
    return tokenizer


# -- from Transformers ---------------------------------------------------------------

def is_siglip_spm(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` (a Transformers tokenizer) is a sentencepiece ``SiglipTokenizer`` with
    its model file, which :func:`from_transformers` converts."""
    return (type(tokenizer).__name__ == "SiglipTokenizer" and getattr(tokenizer, "backend_tokenizer", None) is None
            and Path(str(getattr(tokenizer, "vocab_file", "") or "")).is_file())


def from_transformers(tokenizer: Any) -> "Tokenizer":
    """:func:`convert` of a loaded Transformers ``SiglipTokenizer``: its spiece.model, the special and
    added tokens it splits texts on, its lower casing, end-of-text and unknown tokens."""
    if not is_siglip_spm(tokenizer):
        raise ModelError(f"{type(tokenizer).__name__} is not a sentencepiece SiglipTokenizer with its "
                         f"{SPIECE_FILE}; clipdex converts only those. {CONVERT_HINT}")
    ids: dict[str, int] = {str(k): int(v) for k, v in tokenizer.added_tokens_encoder.items()}
    for token in tokenizer.all_special_tokens:
        ids.setdefault(str(token), int(tokenizer.convert_tokens_to_ids(token)))
    return convert(tokenizer.vocab_file, eos_token=str(tokenizer.eos_token),
                   specials=[SpecialToken(content, i) for content, i in ids.items()],
                   do_lower_case=bool(getattr(tokenizer, "do_lower_case", True)),
                   unk_token=str(tokenizer.unk_token or ""))
