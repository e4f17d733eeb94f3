"""Offline tokenizers: the real CLIP BPE tokenizer and a tiny T5-style stand-in.

Built from vocabularies shipped in ``lotts/assets`` (no hub access), so prompt token positions
(e.g. of "high-quality") match the real SD/SDXL/FLUX CLIP tokenizers exactly. Used by the tiny
and real-size benchmark pipelines, the miniature world's training and the tests.
"""
from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

ASSETS = Path(__file__).resolve().parent / "assets"
CLIP_VOCAB_FILE = ASSETS / "bpe_simple_vocab_16e6.txt.gz"
T5_VOCAB_FILE = ASSETS / "tiny_t5_unigram.json"

# Number of merges CLIP uses: open_clip/OpenAI CLIP take merges[1 : 49152 - 256 - 2 + 1].
_CLIP_NUM_MERGES = 49152 - 256 - 2
_CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"


# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------
def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's byte -> printable unicode table, in CLIP's vocabulary order."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


@lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    lines = gzip.decompress(CLIP_VOCAB_FILE.read_bytes()).decode("utf-8").split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1 : _CLIP_NUM_MERGES + 1])
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    tokens += [_CLIP_BOS, CLIP_EOS]
    return {t: i for i, t in enumerate(tokens)}, merges  # type: ignore[return-value]


def clip_tokenizer(max_length: int = 77, pad_token: str = CLIP_EOS) -> Any:
    """The real CLIP BPE tokenizer (49408 tokens), built offline from the bundled vocabulary.

    Ids equal those of the tokenizers of SD 1.x/2.x, SDXL and FLUX, so token positions in tests
    are the real ones. ``pad_token``: SD 1.x, SDXL's first and FLUX's CLIP tokenizer pad with
    ``"<|endoftext|>"`` (id 49407); SD 2.x and SDXL's second tokenizer pad with ``"!"`` (id 0).
    """
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        pad_token=pad_token,
        model_max_length=max_length,
    )


@lru_cache(maxsize=1)
def _t5_vocab() -> tuple[tuple[str, float], ...]:
    data = json.loads(T5_VOCAB_FILE.read_text(encoding="utf-8"))
    return tuple((str(p), float(s)) for p, s in data["vocab"])


def t5_tokenizer(max_length: int = 512) -> Any:
    """A tiny T5-style (Unigram, SentencePiece-like) tokenizer trained offline
(by ``tools/train_t5_vocab.py``, stored in ``lotts/assets/tiny_t5_unigram.json``).

    Stands in for FLUX's T5-XXL tokenizer: same class and special ids (``<pad>`` 0, ``</s>`` 1,
    ``<unk>`` 2, ``</s>`` appended), 524 pieces. Ids differ from the real T5 vocabulary.
    """
    from transformers import T5TokenizerFast

    vocab = list(_t5_vocab())
    assert [p for p, _ in vocab[:3]] == ["<pad>", "</s>", "<unk>"], vocab[:3]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=max_length)
