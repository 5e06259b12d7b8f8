"""Tiny random Transformers checkpoints (CLIPModel, SiglipModel), saved with ``save_pretrained``.

Each folder holds what a hub checkpoint holds: config.json, model.safetensors,
preprocessor_config.json and the tokenizer files (tokenizer.json,
tokenizer_config.json). The CLIP one has CLIP's real BPE vocabulary (written from
open_clip's bundled ``bpe_simple_vocab_16e6.txt.gz``, as a CLIPTokenizer takes it);
the SigLIP one a small Unigram model trained here and saved as tokenizer.json. A
third folder is SigLIP as the hub ships it: a sentencepiece spiece.model, trained
here, for Transformers' own SiglipTokenizer, and no tokenizer.json.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

from clipdex.models.tokenizer import MERGE_COUNT, _byte_alphabet, _vocab_path

TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
CLIP_IMAGE = 32  # pixels: CLIPImageProcessor's shortest_edge and crop
SIGLIP_IMAGE = 48
SIGLIP_CONTEXT = 24  # text_config.max_position_embeddings: SigLIP pads every text to it
SIGLIP_CORPUS = [
    "a photo of a dog", "a photo of a cat in the snow", "listen to music at dusk", "a red car on a street",
    "people on a beach", "mountains and a lake", "a plate of food", "café crème brûlée", "one two three",
    "the quick brown fox jumps over the lazy dog", "a painting of flowers", "city lights at night",
]


def clip_tokenizer() -> object:
    """A CLIPTokenizer with CLIP's own BPE vocabulary (49408 tokens)."""
    from transformers import CLIPTokenizer

    with gzip.open(_vocab_path()) as f:
        lines = f.read().decode("utf-8").split("\n")[1:MERGE_COUNT + 1]
    merges = [tuple(line.split()) for line in lines]
    alphabet = list(_byte_alphabet().values())
    tokens = (alphabet + [a + "</w>" for a in alphabet] + ["".join(m) for m in merges]
              + ["<|startoftext|>", "<|endoftext|>"])
    vocab = {token: i for i, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def siglip_tokenizer() -> object:
    """A fast tokenizer like SigLIP's: lower case, sentencepiece-style Unigram pieces, ``</s>``
    appended and used as padding."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from tokenizers.trainers import UnigramTrainer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Strip()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = UnigramTrainer(vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator(SIGLIP_CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="</s>", unk_token="<unk>",
                                   model_max_length=SIGLIP_CONTEXT, model_input_names=["input_ids"])


def write_clip(folder: Path, seed: int = 0) -> Path:
    """A tiny random CLIPModel with its processor and tokenizer, saved into ``folder``."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(
        text_config=dict(TINY_TEXT, vocab_size=49408, max_position_embeddings=77, bos_token_id=49406,
                         eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(TINY_VISION, image_size=CLIP_IMAGE, patch_size=8), projection_dim=16)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": CLIP_IMAGE}, crop_size={"height": CLIP_IMAGE, "width": CLIP_IMAGE},
                       resample=3).save_pretrained(folder)
    clip_tokenizer().save_pretrained(folder)  # type: ignore[attr-defined]
    return folder


def write_siglip(folder: Path, seed: int = 0) -> Path:
    """A tiny random SiglipModel (bilinear resampling, squash resize), saved into ``folder``; its
    scale and bias set so that sigmoid scores are not all ~0."""
    tokenizer = siglip_tokenizer()
    _write_siglip_model(folder, seed, len(tokenizer), resample=2)  # type: ignore[arg-type]
    tokenizer.save_pretrained(folder)  # type: ignore[attr-defined]
    return folder


def _write_siglip_model(folder: Path, seed: int, vocab_size: int, resample: int) -> None:
    """A tiny random SiglipModel for a tokenizer of ``vocab_size`` (pad and end of text: id 1) and
    its SiglipImageProcessor with ``resample`` (PIL's number), saved into ``folder``."""
    import math

    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    config = SiglipConfig(
        text_config=dict(TINY_TEXT, vocab_size=vocab_size, max_position_embeddings=SIGLIP_CONTEXT,  # type: ignore[arg-type]
                         pad_token_id=1, eos_token_id=1, bos_token_id=None),
        vision_config=dict(TINY_VISION, image_size=SIGLIP_IMAGE, patch_size=16))
    torch.manual_seed(seed)
    model = SiglipModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-1.0)
    model.save_pretrained(folder)
    SiglipImageProcessor(size={"height": SIGLIP_IMAGE, "width": SIGLIP_IMAGE}, resample=resample,
                         image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]).save_pretrained(folder)


# -- SigLIP as the hub ships it: a sentencepiece spiece.model for SiglipTokenizer, no tokenizer.json --

SPM_VOCAB = 320  # pieces asked of the trainer (it may stop short on a small corpus)
SPM_TEXT = (
    "a an the photo picture image of in on at with and or to from by for over under near dog dogs cat cats puppy "
    "kitten bird horse cow sheep snow rain sun beach sea lake river mountain mountains forest tree trees flower "
    "flowers garden city street road car cars bus train bicycle house building bridge night day dusk dawn light "
    "lights red green blue yellow black white brown orange quick lazy fox jumps running sitting playing music "
    "listen people person man woman child children plate food pizza cake coffee tea table chair painting drawing "
    "one two three four five 1 2 3 10 42 123 2024 café crème brûlée naïve résumé straße über ελλάδα οδός "
    "日本 東京 写真 猫 犬 москва кошка"
)
SPM_WORDS = tuple(SPM_TEXT.split())


def siglip_spm_corpus(lines: int = 1200, seed: int = 0) -> list[str]:
    """Sentences to train a small sentencepiece model on: SPM_WORDS in random orders, some capitalised
    or punctuated as captions are (the trainer sees them raw, as SigLIP's was trained)."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = [rng.choice(SPM_WORDS) for _ in range(rng.randint(2, 10))]
        text = " ".join(words)
        out.append(text.capitalize() + rng.choice(["", ".", "!", ","]) if rng.random() < 0.3 else text)
    return out


def write_spiece_model(path: Path, seed: int = 0, extra: Sequence[str] = ()) -> Path:
    """A Unigram sentencepiece model laid out as SigLIP's (T5's): <pad> 0, </s> 1, <unk> 2, no <s>,
    the nmt_nfkc normaliser with a dummy prefix, trained here on :func:`siglip_spm_corpus` (and
    ``extra`` lines)."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(siglip_spm_corpus(seed=seed) + list(extra)), model_writer=model, model_type="unigram",
        vocab_size=SPM_VOCAB, hard_vocab_limit=False, character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2,
        bos_id=-1, num_threads=1, shuffle_input_sentence=False, minloglevel=2)
    path.write_bytes(model.getvalue())
    return path


def siglip_spm_tokenizer(folder: Path, seed: int = 0, input_names: tuple[str, ...] = ("input_ids",),
                         extra: Sequence[str] = ()) -> object:
    """Transformers' own SiglipTokenizer over a fresh spiece.model (:func:`write_spiece_model`), saved
    into ``folder`` as the hub has it: spiece.model, tokenizer_config.json and special_tokens_map.json,
    no tokenizer.json. The hub's SigLIP checkpoints give input_ids only (their model_input_names);
    pass ``input_names=("input_ids", "attention_mask")`` for the class's default."""
    import json
    import tempfile

    from transformers import SiglipTokenizer

    with tempfile.TemporaryDirectory() as work:
        tokenizer = SiglipTokenizer(str(write_spiece_model(Path(work) / "spiece.model", seed, extra)),
                                    model_max_length=SIGLIP_CONTEXT, model_input_names=list(input_names))
        tokenizer.save_pretrained(folder)
    special = {"content": "", "lstrip": True, "normalized": False, "rstrip": True, "single_word": False}
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": {**special, "content": "</s>"}, "pad_token": {**special, "content": "</s>"},
         "unk_token": {**special, "content": "<unk>"}}, indent=2))
    assert not (folder / "tokenizer.json").exists()
    return tokenizer


def write_siglip_spm(folder: Path, seed: int = 0, input_names: tuple[str, ...] = ("input_ids",)) -> Path:
    """A tiny random SiglipModel with SigLIP's sentencepiece tokenizer (:func:`siglip_spm_tokenizer`)
    and SiglipImageProcessor, saved into ``folder`` as a hub SigLIP checkpoint is."""
    tokenizer = siglip_spm_tokenizer(folder, seed, input_names)
    _write_siglip_model(folder, seed, len(tokenizer), resample=3)  # type: ignore[arg-type]
    return folder


HUB_REVISION = "0123456789abcdef0123456789abcdef01234567"


def cache_repo(cache: Path, repo: str, folder: Path) -> Path:
    """``folder``'s files laid out as the hub client would have downloaded ``repo`` into ``cache``."""
    import shutil

    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / HUB_REVISION)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(HUB_REVISION)
    return root
