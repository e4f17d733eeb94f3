"""Tiny, offline diffusers pipelines for tests.

CI machines have no access to a model hub, yet LoTTS hooks into real pipeline classes
(attention processors, schedulers, tokenizers). This module builds SD2.1-, SDXL- and FLUX-like
pipelines with the real classes and tiny random weights in well under a second. The CLIP
tokenizer uses the real CLIP BPE vocabulary shipped in ``lotts/assets`` so prompt token
positions (e.g. of "high-quality") match the real SD/SDXL/FLUX tokenizers exactly.
"""

from __future__ import annotations

import gzip
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "KINDS",
    "SCHEDULERS",
    "build_tiny_pipeline",
    "clip_tokenizer",
    "pipeline_class",
    "save_tiny_pipeline",
    "t5_tokenizer",
    "tiny_call_kwargs",
    "train_t5_unigram_vocab",
]

ASSETS = Path(__file__).resolve().parent / "assets"
CLIP_VOCAB_FILE = ASSETS / "bpe_simple_vocab_16e6.txt.gz"
T5_VOCAB_FILE = ASSETS / "tiny_t5_unigram.json"

KINDS = ("sd", "sdxl", "flux")
SCHEDULERS = ("ddim", "euler", "dpm++", "pndm", "flow-euler")

# Number of merges CLIP uses: open_clip/OpenAI CLIP take merges[1 : 49152 - 256 - 2 + 1].
_CLIP_NUM_MERGES = 49152 - 256 - 2
_CLIP_BOS, _CLIP_EOS = "<|startoftext|>", "<|endoftext|>"


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
    tokens += [_CLIP_BOS, _CLIP_EOS]
    return {t: i for i, t in enumerate(tokens)}, merges  # type: ignore[return-value]


def clip_tokenizer(max_length: int = 77, pad_token: str = _CLIP_EOS):
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


@lru_cache(maxsize=1)
def _t5_vocab() -> tuple[tuple[str, float], ...]:
    data = json.loads(T5_VOCAB_FILE.read_text(encoding="utf-8"))
    return tuple((str(p), float(s)) for p, s in data["vocab"])


def t5_tokenizer(max_length: int = 512):
    """A tiny T5-style (Unigram, SentencePiece-like) tokenizer trained offline.

    Stands in for FLUX's T5-XXL tokenizer: same class and special ids (``<pad>`` 0, ``</s>`` 1,
    ``<unk>`` 2, ``</s>`` appended), 524 pieces. Ids differ from the real T5 vocabulary.
    """
    from transformers import T5TokenizerFast

    vocab = list(_t5_vocab())
    assert [p for p, _ in vocab[:3]] == ["<pad>", "</s>", "<unk>"], vocab[:3]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=max_length)


# --------------------------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------------------------
def pipeline_class(kind: str) -> type:
    """The diffusers pipeline class for ``kind`` (for ``from_pretrained`` in tests)."""
    from diffusers import (
        FluxPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    classes = {
        "sd": StableDiffusionPipeline,
        "sdxl": StableDiffusionXLPipeline,
        "flux": FluxPipeline,
    }
    if kind not in classes:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return classes[kind]


def tiny_call_kwargs(kind: str) -> dict[str, Any]:
    """Call arguments that make a tiny pipeline run fast (64x64, 2 steps)."""
    kw: dict[str, Any] = {"height": 64, "width": 64, "num_inference_steps": 2}
    if kind == "flux":
        kw.update(max_sequence_length=64, guidance_scale=3.5)
    elif kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return kw


def _vae(kind: str):
    from diffusers import AutoencoderKL

    common: dict[str, Any] = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (8, 16, 32, 32),
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 64,
    }
    if kind == "flux":
        common.update(
            latent_channels=16,
            scaling_factor=0.3611,
            shift_factor=0.1159,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
    else:
        common.update(latent_channels=4, scaling_factor=0.18215 if kind == "sd" else 0.13025)
    return AutoencoderKL(**common)


def _clip_text_model(with_projection: bool, pad_token_id: int, hidden_act: str):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=37,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=49407,  # pooled output = hidden state at the first <|endoftext|>
        pad_token_id=pad_token_id,
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config)


def _t5_encoder(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",  # T5 v1.1 / T5-XXL as used by FLUX
        is_encoder_decoder=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def _unet(kind: str):
    from diffusers import UNet2DConditionModel

    config: dict[str, Any] = {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64),
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "cross_attention_dim": 32,
        "attention_head_dim": (2, 4),
        "use_linear_projection": True,
    }
    if kind == "sdxl":
        config.update(
            cross_attention_dim=64,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=80,  # 6 time ids * 8 + pooled text 32
            transformer_layers_per_block=(1, 2),
        )
    return UNet2DConditionModel(**config)


def _default_scheduler(kind: str):
    from diffusers import (
        DDIMScheduler,
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
    )

    if kind == "sd":  # stabilityai/stable-diffusion-2-1 scheduler_config.json
        return DDIMScheduler(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
            prediction_type="v_prediction",
        )
    if kind == "sdxl":  # stabilityai/stable-diffusion-xl-base-1.0 scheduler_config.json
        return EulerDiscreteScheduler(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            interpolation_type="linear",
            prediction_type="epsilon",
            steps_offset=1,
            timestep_spacing="leading",
            use_karras_sigmas=False,
        )
    # black-forest-labs/FLUX.1-dev scheduler_config.json
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def _check_scheduler(kind: str, name: str) -> None:
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {name!r}")
    if (kind == "flux") != (name == "flow-euler"):
        # FLUX needs flow matching (sigmas + dynamic shift); the UNets need DDPM-style ones.
        raise ValueError(f"scheduler {name!r} does not fit a {kind!r} pipeline")


def _swap_scheduler(kind: str, default, name: str):
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
        PNDMScheduler,
    )

    _check_scheduler(kind, name)
    cls, extra = {
        "ddim": (DDIMScheduler, {}),
        "euler": (EulerDiscreteScheduler, {}),
        "dpm++": (
            DPMSolverMultistepScheduler,
            {"algorithm_type": "dpmsolver++", "solver_order": 2},
        ),
        "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
        "flow-euler": (FlowMatchEulerDiscreteScheduler, {}),
    }[name]
    return cls.from_config(default.config, **extra)


def build_tiny_pipeline(kind: str, seed: int = 0, scheduler: str | None = None):
    """A random-weight SD2.1-, SDXL- or FLUX-like pipeline (float32, CPU, eval mode).

    Uses the real pipeline, model and scheduler classes, so LoTTS' hooks see the same module
    names and call paths as with real checkpoints, but runs offline in well under a second at
    64x64. ``kind`` is "sd", "sdxl" or "flux"; ``seed`` fixes the weights without touching the
    caller's RNG state; ``scheduler`` swaps the default ("ddim" for sd, "euler" for sdxl,
    "flow-euler" for flux) for another of ``SCHEDULERS`` that fits the model.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if scheduler is not None:
        _check_scheduler(kind, scheduler)
    # Tokenizers use no RNG; only the weights are built under the forked, seeded RNG.
    tokenizers = {
        "sd": lambda: {"tokenizer": clip_tokenizer(pad_token="!")},
        "sdxl": lambda: {
            "tokenizer": clip_tokenizer(pad_token=_CLIP_EOS),
            "tokenizer_2": clip_tokenizer(pad_token="!"),
        },
        "flux": lambda: {
            "tokenizer": clip_tokenizer(pad_token=_CLIP_EOS),
            "tokenizer_2": t5_tokenizer(),
        },
    }[kind]()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = _vae(kind)
        if kind == "sd":
            # SD 2.x text encoder (OpenCLIP ViT-H) uses gelu; pad "!" = id 0.
            components = {
                "vae": vae,
                "text_encoder": _clip_text_model(False, pad_token_id=0, hidden_act="gelu"),
                "unet": _unet(kind),
                "safety_checker": None,
                "feature_extractor": None,
                "requires_safety_checker": False,
            }
        elif kind == "sdxl":
            components = {
                "vae": vae,
                "text_encoder": _clip_text_model(
                    False, pad_token_id=49407, hidden_act="quick_gelu"
                ),
                "text_encoder_2": _clip_text_model(True, pad_token_id=0, hidden_act="gelu"),
                "unet": _unet(kind),
                "add_watermarker": False,
            }
        else:
            from diffusers import FluxTransformer2DModel

            components = {
                "vae": vae,
                "text_encoder": _clip_text_model(
                    False, pad_token_id=49407, hidden_act="quick_gelu"
                ),
                "text_encoder_2": _t5_encoder(len(tokenizers["tokenizer_2"])),
                "transformer": FluxTransformer2DModel(
                    patch_size=1,
                    in_channels=64,
                    num_layers=1,
                    num_single_layers=2,
                    attention_head_dim=16,
                    num_attention_heads=2,
                    joint_attention_dim=32,
                    pooled_projection_dim=32,
                    guidance_embeds=True,
                    axes_dims_rope=(4, 6, 6),
                ),
            }

    sched = _default_scheduler(kind)
    if scheduler is not None:
        sched = _swap_scheduler(kind, sched, scheduler)
    pipe = pipeline_class(kind)(scheduler=sched, **tokenizers, **components)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()  # fresh modules start in training mode (T5 dropout)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_pipeline(kind: str, path: str | os.PathLike, **kw: Any) -> str:
    """Build a tiny pipeline and ``save_pretrained`` it to ``path``; returns ``path`` as str.

    Tests then exercise the real loading path:
    ``pipeline_class(kind).from_pretrained(path, local_files_only=True)``.
    ``kw`` goes to :func:`build_tiny_pipeline` (``seed``, ``scheduler``).
    """
    path = os.fspath(path)
    build_tiny_pipeline(kind, **kw).save_pretrained(path, safe_serialization=True)
    return path
