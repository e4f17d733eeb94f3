"""Regenerate ``lotts/assets/tiny_t5_unigram.json``, the vocabulary of
:func:`lotts.offline_tokenizers.t5_tokenizer` (a maintenance tool; not shipped in the wheel).

    python tools/train_t5_vocab.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


_T5_CORPUS_WORDS = """
a an the of and or with without in on at to from by for over under above below near behind
between inside outside next front back left right top bottom center middle corner side edge
is are was were be been being has have had do does did can could will would should may might
this that these those it its there here one two three four five six seven eight nine ten many
few some all every each more most less very much small large big tiny huge tall short long wide
narrow round square flat thin thick old new young bright dark light heavy soft hard smooth rough
red orange yellow green blue purple pink brown black white gray grey gold silver cyan magenta
circle square triangle rectangle star heart hexagon sphere cube cone cylinder pyramid ring line
dot stripe stripes pattern grid shape shapes color colors colour colours texture background
image images photo photograph picture painting drawing sketch illustration render rendering
portrait landscape scene view close up closeup shot detailed detail details sharp blurry blur
high low quality resolution noise noisy clean clear crisp realistic photorealistic artistic
high-quality low-quality best worst masterpiece beautiful ugly pretty simple complex colorful
cat cats dog dogs bird birds horse fish cow sheep lion tiger bear rabbit fox mouse elephant
man woman person people child children boy girl face hand hands eye eyes hair smile
tree trees flower flowers grass forest mountain mountains river lake sea ocean beach sky cloud
clouds sun moon stars rain snow water fire stone rock sand field garden park road street city
house houses building buildings window door room table chair bed car bus train boat plane
bicycle book cup bottle ball box bag hat shirt dress shoe shoes clock lamp phone computer
sitting standing running walking flying swimming sleeping eating holding wearing looking
red apple green leaf blue car yellow banana white cloud black cat brown dog pink flower
during morning evening night day sunset sunrise summer winter spring autumn style styled
oil watercolor digital art camera lens lighting light shadow shadows reflection glass metal
wooden wood plastic paper stone marble concrete brick fabric fur feathers leather
"""

_T5_CORPUS_SENTENCES = """
A high-quality image of a cat.
A low-quality image of a dog.
A photo of a red circle next to a blue square.
A green triangle above a yellow star on a white background.
A high-quality photo of a brown horse running in a green field at sunset.
A low-quality, blurry picture of a small bird sitting on a tree.
An oil painting of a purple flower in a glass vase on a wooden table.
A detailed illustration of a city street at night with bright lights.
Two black cats and three white dogs sleeping on a red bed.
A close up portrait of a young woman with long brown hair, smiling.
A beautiful landscape with mountains, a lake and clouds in the blue sky.
A digital art rendering of a silver sphere and a gold cube.
A watercolor sketch of a boat on the sea during a summer morning.
A photorealistic image of an orange car parked in front of a house.
A child holding a yellow balloon in a park.
The best quality masterpiece, sharp focus, highly detailed.
The worst quality, noisy, jpeg artifacts, ugly, deformed.
"""


def train_t5_unigram_vocab() -> list[tuple[str, float]]:
    """Train a small Unigram model (T5's model type) on the built-in English corpus.

    Returns ``[(piece, log_prob), ...]`` with ``<pad>``, ``</s>``, ``<unk>`` first, then the
    pieces by descending score. Training is not bit-reproducible across processes (tie order,
    last-digit float noise), so :func:`t5_tokenizer` loads the result of one run, stored in
    ``lotts/assets/tiny_t5_unigram.json``; rerun this only to regenerate that file.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    words = _T5_CORPUS_WORDS.split()
    sentences = [s for s in _T5_CORPUS_SENTENCES.strip().split("\n") if s]
    corpus = sentences + [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    corpus += [w.capitalize() for w in words]
    tok = Tokenizer(models.Unigram())
    # The same pre-tokenization transformers' T5 tokenizer applies, so pieces carry "▁".
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    specials = ["<pad>", "</s>", "<unk>"]
    trainer = trainers.UnigramTrainer(
        vocab_size=1000,
        special_tokens=specials,
        unk_token="<unk>",
        shrinking_factor=0.75,
        max_piece_length=16,
        n_sub_iterations=2,
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    vocab = json.loads(tok.to_str())["model"]["vocab"]
    pieces = sorted(
        ((str(p), round(float(s), 4)) for p, s in vocab if p not in specials),
        key=lambda ps: (-ps[1], ps[0]),
    )
    return [(p, 0.0) for p in specials] + pieces


def main() -> int:
    target = ROOT / "lotts" / "assets" / "tiny_t5_unigram.json"
    data = json.loads(target.read_text(encoding="utf-8"))  # keep its description
    data["vocab"] = train_t5_unigram_vocab()
    target.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
