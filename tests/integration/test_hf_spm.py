"""SigLIP as the hub ships it (a sentencepiece spiece.model for Transformers' SiglipTokenizer, no
tokenizer.json): clipdex's conversion (clipdex/models/spm.py) gives SiglipTokenizer's own ids,
token for token, and an index of such a checkpoint answers texts on the default CPU path
without torch, transformers or sentencepiece, with the vectors of ``get_text_features``."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipdex import Index
from clipdex.errors import ModelError
from clipdex.models import spm
from clipdex.models.hf_tokenizer import TOKENIZER_FILE, HfTokenizer
from clipdex.models.registry import resolve_model
from clipdex.models.runtimes.onnx import ensure_exported
from tests.hf_checkpoints import SIGLIP_CONTEXT, SPM_WORDS, siglip_spm_corpus, siglip_spm_tokenizer

LONG = "a dog running on the beach at dusk " * 12
AWKWARD = [
    "a photo of a dog", "A PHOTO OF A DOG", "Hello, World!", "!!!", "...dog...", "(a) [b] {c} <d> 'e' \"f\"",
    "it's they're we'll", "a-b_c/d\\e|f~g^h`i@j#k$l%m&n*o+p=q?r;s:t", "café crème brûlée", "日本 東京 写真",
    "emoji 🐶 test 😀😀", "👍🏽 🇫🇷 ❤️", "\ttabs\tand\nnew\nlines\r\n", "  spaced   out  ", "\u00a0nbsp\u3000ideographic",
    "zero\u200bwidth", "", " ", "\n", LONG, "word " * 100, "</s>", "a </s> b", "</s>dog", "dog </s>", "dog</s></s>",
    "<unk>", "the <unk> cat", "<pad> cat", "▁", "▁dog", "dog▁cat", "▁▁ ▁", "0 1 2 3 42 2024 12,345.67 3.14",
    "ΟΔΟΣ ΟΔΟΣ. ΣΑΣ", "İstanbul STRASSE straße", "ﬁsh Ａ！ｂ ① ～", "Tiếng Việt",
    unicodedata.normalize("NFD", "Tiếng Việt"), unicodedata.normalize("NFD", "résumé naïve 한국어"), "x\x1cy\x1fz",
    "RTL \u202eabc", "¿qué? «oui» 。、",
]
LENGTHS = [SIGLIP_CONTEXT, 8, 3]
# SiglipTokenizer warns of each text that ends in its own '</s>'.
pytestmark = pytest.mark.filterwarnings("ignore:This sequence already has")


@lru_cache(maxsize=2)
def _reference(folder: Path) -> Any:
    """The checkpoint's tokenizer as Transformers loads it (SiglipTokenizer, over sentencepiece)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert type(tokenizer).__name__ == "SiglipTokenizer"
    return tokenizer


@pytest.fixture(scope="module")
def masked_spm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SiglipTokenizer with the class's own inputs (input_ids and attention_mask) over an spm model
    that knows '<' and '>' (so its <unk> prefix ends in a known piece, as a big vocabulary's does)."""
    folder = tmp_path_factory.mktemp("spm-masked")
    siglip_spm_tokenizer(folder, seed=1, input_names=("input_ids", "attention_mask"), extra=["<a> b > c < d"] * 20)
    return folder


@pytest.fixture(params=["hub", "masked"])
def spm_folder(request: pytest.FixtureRequest) -> Path:
    folder: Path = request.getfixturevalue("hf_siglip_spm_dir" if request.param == "hub" else "masked_spm")
    return folder


def _converted(folder: Path, work: Path, length: int) -> HfTokenizer:
    """clipdex's tokenizer for the folder's SiglipTokenizer, as the ONNX path runs it."""
    reference = _reference(folder)
    spm.from_transformers(reference).save(str(work / TOKENIZER_FILE))
    return HfTokenizer(work / TOKENIZER_FILE, length, "max_length", reference.pad_token_id,
                       str(reference.pad_token), reference.model_input_names)


def _expected(folder: Path, texts: list[str], length: int) -> dict[str, np.ndarray]:
    encoded = _reference(folder)(texts, padding="max_length", truncation=True, max_length=length,
                                 return_tensors="np")
    return {name: np.asarray(encoded[name], dtype=np.int64) for name in encoded}


@pytest.mark.parametrize("length", LENGTHS)
def test_awkward_texts_token_for_token(tmp_path: Path, spm_folder: Path, length: int) -> None:
    ours = _converted(spm_folder, tmp_path, length)(AWKWARD)
    theirs = _expected(spm_folder, AWKWARD, length)
    assert set(ours) == set(theirs) == set(_reference(spm_folder).model_input_names)
    for i, text in enumerate(AWKWARD):
        if "</s>" in text and length < SIGLIP_CONTEXT:  # see test_a_truncated_text_ending_in_the_literal_eos
            assert ours["input_ids"][i].tolist() == theirs["input_ids"][i].tolist(), text
            continue
        for name in theirs:
            assert ours[name][i].tolist() == theirs[name][i].tolist(), (name, text)


def test_random_texts_token_for_token(tmp_path: Path, spm_folder: Path) -> None:
    """Mixtures of the awkward: words, capitals, punctuation, whitespace of every kind, special tokens
    and '▁' written out, compatibility and decomposed characters, unknown scripts."""
    rng = random.Random(13)
    pool = ([*"abcxyzABCXYZ0123456789", *r"""!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~"""] + list(SPM_WORDS)
            + [w.upper() for w in SPM_WORDS[:40]]
            + [" ", "  ", "\t", "\n", "\r\n", "\x0b", "\x1c", "\x85", "\xa0", "\u2003", "\u3000", "\u200b", "\ufeff",
               "▁", "</s>", "<unk>", "<pad>", "Σ", "ΟΔΟΣ", "İ", "ß", "ﬁ", "Ａ", "！", "ℌ", "①", "½", "～", "e\u0301",
               "a\u0308", "\u1100\u1161", "日本", "😀", "👍🏽", "🇫🇷", "¿", "。", "—", "…", "«", "’", "ไทย", "עברית"])
    texts = ["".join(rng.choice(pool) + rng.choice(["", " "]) for _ in range(rng.randint(0, 14)))
             for _ in range(600)]
    for length in (SIGLIP_CONTEXT, 6):
        ours = _converted(spm_folder, tmp_path, length)(texts)
        theirs = _expected(spm_folder, texts, length)
        wrong = [t for i, t in enumerate(texts) if ours["input_ids"][i].tolist() != theirs["input_ids"][i].tolist()]
        assert not wrong, wrong[:5]
        if "attention_mask" in theirs:
            masks = [t for i, t in enumerate(texts) if "</s>" not in t
                     and ours["attention_mask"][i].tolist() != theirs["attention_mask"][i].tolist()]
            assert not masks, masks[:5]


def test_truncation_keeps_the_end_of_text_last(tmp_path: Path, hf_siglip_spm_dir: Path) -> None:
    for length in LENGTHS:
        ids = _converted(hf_siglip_spm_dir, tmp_path, length)([LONG])["input_ids"][0].tolist()
        assert len(ids) == length and ids[-1] == _reference(hf_siglip_spm_dir).eos_token_id
        assert ids == _expected(hf_siglip_spm_dir, [LONG], length)["input_ids"][0].tolist()


def test_a_truncated_text_ending_in_the_literal_eos(tmp_path: Path, masked_spm: Path) -> None:
    """Where truncation leaves a text's own '</s>' last, SiglipTokenizer appends none and masks its
    padding from there; clipdex's appends one, masked in (the same ids: '</s>' pads too). The hub's
    SigLIP checkpoints take no attention mask."""
    text = "dog cat </s> dog cat snow"
    ours = _converted(masked_spm, tmp_path, 4)([text])
    theirs = _expected(masked_spm, [text], 4)
    assert ours["input_ids"].tolist() == theirs["input_ids"].tolist()
    assert ours["attention_mask"].sum() == theirs["attention_mask"].sum() + 1


def test_a_text_of_its_own_special_tokens(tmp_path: Path, hf_siglip_spm_dir: Path) -> None:
    reference = _reference(hf_siglip_spm_dir)
    ids = _converted(hf_siglip_spm_dir, tmp_path, SIGLIP_CONTEXT)(["<unk> a </s>"])["input_ids"][0].tolist()
    assert ids[0] == reference.unk_token_id and ids[2:] == [reference.eos_token_id] * (SIGLIP_CONTEXT - 2)


def test_export_writes_the_tokenizer_and_its_rules(hf_siglip_spm_dir: Path) -> None:
    spec = resolve_model(f"hf:{hf_siglip_spm_dir}")
    meta = ensure_exported(spec)
    reference = _reference(hf_siglip_spm_dir)
    assert not (hf_siglip_spm_dir / TOKENIZER_FILE).exists()  # the checkpoint's folder is left alone
    assert meta["tokenizer"] == "tokenizers" and meta["text_inputs"] == ["input_ids"]
    assert (meta["pad_id"], meta["pad_token"], meta["padding_side"], meta["truncation_side"]) == (
        reference.pad_token_id, "</s>", "right", "right")
    assert (meta["context_length"], meta["text_padding"]) == (SIGLIP_CONTEXT, "max_length")


def _reference_texts(folder: Path, texts: list[str]) -> np.ndarray:
    """Transformers' own text vectors: get_text_features on SiglipTokenizer's output."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder).eval()
    encoded = _reference(folder)(texts, padding="max_length", truncation=True, max_length=SIGLIP_CONTEXT,
                                 return_tensors="pt")
    with torch.no_grad():
        features = model.get_text_features(**encoded)
    features = features if isinstance(features, torch.Tensor) else features.pooler_output
    return torch.nn.functional.normalize(features, dim=-1).numpy()


def _fresh_text_vectors(index: Path, texts: list[str], out: Path) -> list[str]:
    """Text vectors from a new interpreter's index (saved to ``out``), then whether it imported
    torch, transformers or sentencepiece."""
    code = (f"import sys, numpy; from clipdex import Index; "
            f"numpy.save({str(out)!r}, Index.open({str(index)!r}).encoder.encode_texts({texts!r})); "
            "print(*(name in sys.modules for name in ('torch', 'transformers', 'sentencepiece')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_an_index_answers_texts_without_torch_as_transformers_does(tmp_path: Path, photos: Path,
                                                                   hf_siglip_spm_dir: Path) -> None:
    texts = ["a dog in the snow", "A RED CAR!", "café 日本 😀", "", "dog </s> cat", "\tthe ▁ lake\n", LONG]
    with Index.open(tmp_path / "idx", create=True, model=f"hf:{hf_siglip_spm_dir}") as index:
        index.add(photos)
        assert index.encoder.backend == "onnx"
        searched = [r.path for r in index.search("a dog in the snow", k=3)]
    assert _fresh_text_vectors(tmp_path / "idx", texts, tmp_path / "texts.npy") == ["False", "False", "False"]
    cosines = (np.load(tmp_path / "texts.npy") * _reference_texts(hf_siglip_spm_dir, texts)).sum(axis=1)
    assert cosines.min() >= 0.999, cosines
    assert [r.path for r in Index.open(tmp_path / "idx").search("a dog in the snow", k=3)] == searched


def test_a_checkpoint_with_an_attention_mask_too(tmp_path: Path, hf_siglip_spm_dir: Path,
                                                 masked_spm: Path) -> None:
    """SiglipTokenizer's own default inputs (input_ids and attention_mask): the export's text tower
    takes both, fed by the converted tokenizer."""
    from clipdex.models.factory import make_encoder

    folder = tmp_path / "siglip-masked"
    shutil.copytree(hf_siglip_spm_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("model_input_names")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    spec = resolve_model(f"hf:{folder}")
    assert ensure_exported(spec)["text_inputs"] == ["input_ids", "attention_mask"]
    texts = ["a dog in the snow", "A RED CAR!", "", LONG]
    vectors = make_encoder(spec, device="cpu", precision="fp32").encode_texts(texts)
    assert (vectors * _reference_texts(folder, texts)).sum(axis=1).min() >= 0.999


def test_what_it_cannot_convert_says_so(tmp_path: Path, hf_siglip_dir: Path) -> None:
    import sentencepiece
    from transformers import AutoTokenizer

    broken = tmp_path / "spiece.model"
    broken.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="is not a sentencepiece model"):
        spm.convert(broken)
    bpe = tmp_path / "bpe.model"
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(siglip_spm_corpus()), model_prefix=str(bpe)[:-6],
                                             model_type="bpe", vocab_size=200, minloglevel=2)
    with pytest.raises(ModelError, match="not Unigram"):
        spm.convert(bpe)
    fast = AutoTokenizer.from_pretrained(hf_siglip_dir)  # a tokenizer.json already: nothing to convert
    assert not spm.is_siglip_spm(fast)
    with pytest.raises(ModelError, match=r"tokenizer\.json"):
        spm.from_transformers(fast)
