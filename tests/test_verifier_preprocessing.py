"""Each verifier's preprocessing and tokenization, pinned to its official scorer's behaviour.

Offline and without the official packages: the expected pixels and ids come from the official
definitions written out here with PIL/numpy/torch (torchvision's float-tensor resize is
`F.interpolate(bicubic, antialias=True)`), never from the verifiers' own transforms. The tiny
models of `test_verifiers` are loaded through `load_verifier`, so the transforms tested are the
ones the verifiers use.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lotts.verifiers import load_verifier
from lotts.verifiers._layers import RELU_LAYOUT, MLPHead
from lotts.verifiers._transforms import CLIP_MEAN, CLIP_STD, ResizeLongestPadTransform
from tests.test_verifiers import (  # noqa: F401 (fixtures)
    _mlp_head_sd,
    _offline,
    _save_processor,
    _save_tiny_clip,
    _tokenizer,
    bert_tokenizer_dir,
    clip_tokenizer_dir,
    tiny_image_reward_state_dict,
    tiny_openclip_state_dict,
)

SIZE = 32  # the tiny vision towers' input size


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory, clip_tokenizer_dir, bert_tokenizer_dir):  # noqa: F811
    """`load_verifier(name, **kwargs)` arguments of the five built-ins on tiny random weights."""
    root = tmp_path_factory.mktemp("verifiers")
    clip_dir = _save_tiny_clip(root / "clip", clip_tokenizer_dir)
    pick_dir = _save_tiny_clip(root / "PickScore_v1", clip_tokenizer_dir, with_tokenizer=False)
    _save_processor(root / "processor", _tokenizer(clip_tokenizer_dir))
    torch.manual_seed(3)
    torch.save(_mlp_head_sd(24), root / "sac+logos+ava1-l14-linearMSE.pth")
    sd = tiny_openclip_state_dict(vocab=len(_tokenizer(clip_tokenizer_dir)))
    torch.save({"state_dict": sd}, root / "HPS_v2.1_compressed.pt")
    torch.save(tiny_image_reward_state_dict(vocab=len(_tokenizer(bert_tokenizer_dir)) + 2),
               root / "ImageReward.pt")
    return {
        "clipscore": {"path": clip_dir},
        "pickscore": {"path": pick_dir, "processor_path": root / "processor"},
        "aesthetic": {"path": root / "sac+logos+ava1-l14-linearMSE.pth", "clip_path": clip_dir},
        "hpsv2": {"path": root / "HPS_v2.1_compressed.pt", "tokenizer_path": clip_tokenizer_dir,
                  "vision_heads": 4, "text_heads": 2},
        "image-reward": {"path": root / "ImageReward.pt", "tokenizer_path": bert_tokenizer_dir,
                         "vision_heads": 4, "text_heads": 2},
    }


@pytest.fixture(scope="module")
def tokenizers(clip_tokenizer_dir, bert_tokenizer_dir):  # noqa: F811
    """The tiny tokenizers as saved, before any verifier adds tokens."""
    return {"clip": _tokenizer(clip_tokenizer_dir), "bert": _tokenizer(bert_tokenizer_dir)}


@pytest.fixture(scope="module")
def verifiers(tiny_files):
    return {name: load_verifier(name, device="cpu", **kwargs)
            for name, kwargs in tiny_files.items()}


def _transform(verifier):
    return verifier.transform if hasattr(verifier, "transform") else verifier.encoder.transform


def _random_rgb(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _normalized(array01):
    """(H, W, 3) float in [0, 1] -> torchvision Normalize(CLIP mean/std) as (3, H, W)."""
    pixels = torch.as_tensor(np.asarray(array01, dtype=np.float32)).permute(2, 0, 1)
    return (pixels - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


def _black():
    return (-torch.tensor(CLIP_MEAN) / torch.tensor(CLIP_STD)).view(3, 1, 1)


# ----- HPSv2: longest side to the size, float-tensor bicubic, black padding ------------------


def test_hpsv2_640x480_is_224x168_content_between_black_rows():
    image = _random_rgb(640, 480)
    out = ResizeLongestPadTransform(size=224)([image])[0]
    assert out.shape == (3, 224, 224)
    # 480 * 224/640 = 168 rows of content; (224 - 168) // 2 = 28 black rows above, 28 below
    black = _black().expand(3, 28, 224)
    torch.testing.assert_close(out[:, :28], black)
    torch.testing.assert_close(out[:, 196:], black)
    content = F.interpolate(torch.from_numpy(np.asarray(image) / 255.0).float()
                            .permute(2, 0, 1)[None], size=(168, 224), mode="bicubic",
                            align_corners=False, antialias=True)[0]
    torch.testing.assert_close(out[:, 28:196], _normalized(content.permute(1, 2, 0)))
    assert (out[:, 28] != black[:, 0]).any() and (out[:, 195] != black[:, 0]).any()


@pytest.mark.parametrize("width, height, content, before", [
    (64, 48, (24, 32), (4, 0)),    # landscape: rows padded 4 above, 4 below
    (48, 64, (32, 24), (0, 4)),    # portrait: columns padded
    (50, 33, (21, 32), (5, 0)),    # 33 * 0.64 = 21.12 -> 21 rows; odd pad 11 = 5 above + 6 below
    (40, 40, (32, 32), (0, 0)),    # square: no padding
])
def test_hpsv2_verifier_pads_where_resize_longest_max_does(verifiers, width, height, content,
                                                           before):
    image = _random_rgb(width, height, seed=width)
    out = _transform(verifiers["hpsv2"])([image])[0]
    assert out.shape == (3, SIZE, SIZE)
    top, left = before
    rows, cols = content
    resized = F.interpolate(torch.from_numpy(np.asarray(image) / 255.0).float()
                            .permute(2, 0, 1)[None], size=content, mode="bicubic",
                            align_corners=False, antialias=True)[0]
    expected = _black().expand(3, SIZE, SIZE).clone()
    expected[:, top:top + rows, left:left + cols] = _normalized(resized.permute(1, 2, 0))
    torch.testing.assert_close(out, expected)


def test_hpsv2_rgba_is_scored_as_its_rgb_colours(verifiers):
    """Official HPSv2 keeps RGBA and crashes in the 3-channel patch embedding; here RGBA is
    converted to RGB (alpha dropped), so it scores as the RGB image PIL's convert gives."""
    rgba = _rgba_half_transparent(40, 30)
    transform = _transform(verifiers["hpsv2"])
    torch.testing.assert_close(transform([rgba]), transform([rgba.convert("RGB")]))


def test_hpsv2_float_resize_is_not_clamped():
    """torchvision's float-tensor bicubic resize keeps its overshoot (a uint8 one clamps):
    upscaling a black|white step rings past both ends."""
    step = np.zeros((4, 8, 3), dtype=np.uint8)
    step[:, 4:] = 255
    out = ResizeLongestPadTransform(size=24)([Image.fromarray(step)])[0]
    content = out[:, 6:18]  # 4 * 3 = 12 rows, 6 black rows above
    white = ((1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)).view(3, 1, 1)
    assert (content.amax(dim=(1, 2)) > white.flatten() + 0.05).all()
    assert (content.amin(dim=(1, 2)) < _black().flatten() - 0.05).all()


# ----- ImageReward / aesthetic: PIL resize and crop in the image's own mode, RGB last ---------


def _rgba_half_transparent(width, height, seed=5):
    """Random colours everywhere; the right half fully transparent (its colours hidden)."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    array[..., 3] = 255
    array[:, width // 2:, 3] = 0
    return Image.fromarray(array, "RGBA")


def _resize_then_convert(image, size):
    """OpenAI CLIP / ImageReward `_transform` with PIL: Resize (shortest side, bicubic, in the
    image's mode), CenterCrop (offset round), convert RGB, ToTensor, Normalize."""
    width, height = image.size
    if width <= height:
        new = (size, int(size * height / width))
    else:
        new = (int(size * width / height), size)
    if new != image.size:
        image = image.resize(new, Image.Resampling.BICUBIC)
    left, top = round((new[0] - size) / 2), round((new[1] - size) / 2)
    image = image.crop((left, top, left + size, top + size)).convert("RGB")
    return _normalized(np.asarray(image) / 255.0)


@pytest.mark.parametrize("name", ["image-reward", "aesthetic"])
def test_rgba_is_resized_premultiplied_then_converted(verifiers, name):
    rgba = _rgba_half_transparent(64, 48)
    out = _transform(verifiers[name])([rgba])[0]
    torch.testing.assert_close(out, _resize_then_convert(rgba, SIZE))
    convert_first = _resize_then_convert(rgba.convert("RGB"), SIZE)
    assert (out - convert_first).abs().max() > 0.1, "alpha must weigh in while resizing"


@pytest.mark.parametrize("name", ["image-reward", "aesthetic"])
def test_palette_image_resizes_nearest_like_pil(verifiers, name):
    palette = _random_rgb(50, 40, seed=7).quantize(colors=16)
    assert palette.mode == "P"
    out = _transform(verifiers[name])([palette])[0]
    torch.testing.assert_close(out, _resize_then_convert(palette, SIZE))
    assert not torch.allclose(out, _resize_then_convert(palette.convert("RGB"), SIZE))


def _column_ramp(width, height):
    """Pixel value = column index, so a crop's first column is its left offset."""
    ramp = np.tile(np.arange(width, dtype=np.uint8), (height, 1))
    return Image.fromarray(np.stack([ramp] * 3, axis=-1))


# torchvision CenterCrop: int(round(margin / 2)) with Python's round, half to even.
ROUNDED_OFFSETS = {1: 0, 2: 1, 3: 2, 5: 2, 7: 4}


@pytest.mark.parametrize("name", ["image-reward", "aesthetic"])
@pytest.mark.parametrize("margin", sorted(ROUNDED_OFFSETS))
def test_center_crop_offset_rounds_like_torchvision(verifiers, name, margin):
    image = _column_ramp(SIZE + margin, SIZE)  # short side already SIZE: no resize
    out = _transform(verifiers[name])([image])[0]
    first_column = float(out[0, 0, 0]) * CLIP_STD[0] + CLIP_MEAN[0]
    assert round(first_column * 255) == ROUNDED_OFFSETS[margin]


# ----- PickScore / CLIPScore: transformers 5 CLIPImageProcessor ------------------------------


def _white_composite(image):
    """transformers 5 convert_to_rgb: alpha-composite onto white with PIL."""
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")


@pytest.mark.parametrize("name", ["pickscore", "clipscore"])
def test_processor_composites_transparency_onto_white(verifiers, name):
    rgba = _rgba_half_transparent(SIZE, SIZE)  # already at size: no resize, no crop
    out = _transform(verifiers[name])([rgba])[0]
    torch.testing.assert_close(out, _normalized(np.asarray(_white_composite(rgba)) / 255.0))
    white = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(out[:, :, SIZE // 2:], white.view(3, 1, 1).expand(3, SIZE, 16))
    palette = _random_rgb(SIZE, SIZE, seed=2).quantize(colors=8)
    palette.info["transparency"] = 0  # palette index 0 transparent
    expected = _normalized(np.asarray(_white_composite(palette)) / 255.0)
    torch.testing.assert_close(_transform(verifiers[name])([palette])[0], expected)


@pytest.mark.parametrize("name", ["pickscore", "clipscore"])
def test_processor_resizes_uint8_and_floors_the_crop_offset(verifiers, name):
    image = _random_rgb(70, 45, seed=3)
    out = _transform(verifiers[name])([image])[0]
    # shortest edge 45 -> 32, long side int(32 * 70 / 45) = 49; crop offset (49 - 32) // 2 = 8
    uint8 = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].contiguous()
    resized = F.interpolate(uint8, size=(32, 49), mode="bicubic", align_corners=False,
                            antialias=True)[0]
    assert resized.dtype == torch.uint8
    crop = resized[:, :, 8:40].permute(1, 2, 0).numpy() / 255.0
    torch.testing.assert_close(out, _normalized(crop), atol=1e-5, rtol=0)
    ramp = _column_ramp(SIZE + 3, SIZE)  # margin 3: floor(1.5) = 1, not torchvision's 2
    first = float(_transform(verifiers[name])([ramp])[0, 0, 0, 0]) * CLIP_STD[0] + CLIP_MEAN[0]
    assert round(first * 255) == 1


def test_processor_pil_backend_resizes_with_pil(tiny_files):
    folder = tiny_files["clipscore"]["path"]
    verifier = load_verifier("clipscore", device="cpu", path=folder, processor_backend="pil")
    image = _random_rgb(45, 70, seed=4)  # portrait: 32 x int(32 * 70 / 45) = 49 rows
    resized = image.resize((32, 49), Image.Resampling.BICUBIC)
    expected = _normalized(np.asarray(resized)[8:40] / 255.0)
    torch.testing.assert_close(verifier.encoder.transform([image])[0], expected,
                               atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="backend"):
        load_verifier("clipscore", device="cpu", path=folder, processor_backend="opencv")


def test_processor_pil_backend_is_transformers_own_pil_processor(tiny_files):
    """transformers 5's CLIPImageProcessorPil runs here (it needs no torchvision): the PIL
    backend must give its pixels on every mode and size."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    folder = tiny_files["clipscore"]["path"]
    verifier = load_verifier("clipscore", device="cpu", path=folder, processor_backend="pil")
    images = _mixed_images()
    reference = CLIPImageProcessorPil.from_pretrained(str(folder))(
        images=images, return_tensors="pt").pixel_values
    torch.testing.assert_close(verifier.encoder.transform(images), reference,
                               atol=1e-5, rtol=0)


def test_processor_transformers4_backend_drops_alpha(tiny_files):
    """transformers 4.x's default slow CLIPImageProcessor converts with PIL's convert("RGB"):
    transparent pixels keep their stored colours, nothing is composited."""
    verifier = load_verifier("pickscore", device="cpu", processor_backend="transformers4",
                             **tiny_files["pickscore"])
    rgba = _rgba_half_transparent(SIZE, SIZE)
    expected = _normalized(np.asarray(rgba.convert("RGB")) / 255.0)
    torch.testing.assert_close(verifier.encoder.transform([rgba])[0], expected, atol=1e-5, rtol=0)


# ----- tokenization ---------------------------------------------------------------------------

LONG_PROMPT = " ".join(["a"] * 100)  # 100 tokens between start and end


def _special_ids(tokenizer):
    return (tokenizer.convert_tokens_to_ids("<|startoftext|>"),
            tokenizer.convert_tokens_to_ids("<|endoftext|>"), tokenizer.convert_tokens_to_ids("a</w>"))


def test_clipscore_long_prompt_is_cut_like_torchmetrics(verifiers, tokenizers):
    """torchmetrics clip_score tokenizes without truncation and keeps ids[:77]: start token and
    76 prompt tokens, no end token."""
    verifier = verifiers["clipscore"]
    encoder = verifier.encoder
    start, end, a = _special_ids(tokenizers["clip"])
    tokens = encoder.tokenize_fn(encoder.tokenizer, [LONG_PROMPT, "a cat"], 77,
                                 torch.device("cpu"))
    assert tokens["input_ids"][0].tolist() == [start] + [a] * 76
    assert tokens["attention_mask"][0].tolist() == [1] * 77
    assert end in tokens["input_ids"][1].tolist()  # short prompts keep theirs
    image = _random_rgb(40, 48)
    model = encoder.model
    ids = torch.tensor([[start] + [a] * 76])
    with torch.no_grad():
        text = F.normalize(_features(model.get_text_features(input_ids=ids)), dim=-1)
        pixels = encoder.transform([image])
        picture = F.normalize(_features(model.get_image_features(pixel_values=pixels)), dim=-1)
    expected = (100 * (text * picture).sum(-1)).clamp(min=0)
    torch.testing.assert_close(verifier([image], [LONG_PROMPT]), expected)


def _features(output):
    """torchmetrics' reading of get_*_features: the pooled output where there is one."""
    pooled = getattr(output, "pooler_output", None)
    return pooled if pooled is not None else output


@pytest.mark.parametrize("name", ["pickscore", "hpsv2"])
def test_pickscore_and_hpsv2_keep_the_end_token(verifiers, name, tokenizers):
    encoder = verifiers[name].encoder
    start, end, a = _special_ids(tokenizers["clip"])
    ids = encoder.tokenize_fn(encoder.tokenizer, [LONG_PROMPT], 77, torch.device("cpu"))
    assert ids["input_ids"][0].tolist() == [start] + [a] * 75 + [end]


def test_hpsv2_cleans_prompts_like_open_clip(verifiers, tokenizers):
    """open_clip basic_clean + whitespace_clean: HTML entities unescaped twice, whitespace
    runs collapsed, ends stripped."""
    encoder = verifiers["hpsv2"].encoder
    raw = encoder.tokenize_fn(encoder.tokenizer, ["  a &amp;amp;\n\t cat  "], 77,
                              torch.device("cpu"))["input_ids"]
    tokenizer = tokenizers["clip"]
    start, end, _ = _special_ids(tokenizer)
    words = [tokenizer.convert_tokens_to_ids(t) for t in ("a</w>", "&</w>", "cat</w>")]
    assert raw[0, :5].tolist() == [start, *words, end]


def test_hpsv2_without_ftfy_warns_on_non_ascii(verifiers, monkeypatch):
    monkeypatch.setitem(sys.modules, "ftfy", None)  # import ftfy now raises ImportError
    encoder = verifiers["hpsv2"].encoder
    with pytest.warns(UserWarning, match="ftfy"):
        encoder.tokenize_fn(encoder.tokenizer, ["don\u2019t"], 77, torch.device("cpu"))


def test_image_reward_enc_dec_are_special_tokens(verifiers, tokenizers):
    """BLIP init_tokenizer adds [DEC] (bos) then [ENC] after bert's vocab: single tokens."""
    base = tokenizers["bert"]
    verifier = verifiers["image-reward"]
    dec, enc = len(base), len(base) + 1
    vocab = base.get_vocab()
    ids = verifier.tokenizer("a [ENC] cat [DEC]").input_ids
    assert ids == [vocab["[CLS]"], vocab["a"], enc, vocab["cat"], dec, vocab["[SEP]"]]
    assert verifier.tokenizer.bos_token_id == dec
    assert len(verifier.tokenizer) == verifier.text.config.vocab_size


# ----- aesthetic head: built by its own structure ---------------------------------------------


def _relu_head_sd(in_features):
    """ava+logos-l14-reluMSE.pth layout: Linear slots 0, 3, 6, 9, 11 (ReLU/Dropout between)."""
    torch.manual_seed(4)
    widths = (in_features, 1024, 128, 64, 16, 1)
    return {f"layers.{slot}.{param}": (torch.randn(out_f, in_f) / math.sqrt(in_f)
                                       if param == "weight" else torch.randn(out_f) * 0.1)
            for slot, in_f, out_f in zip(RELU_LAYOUT, widths, widths[1:])
            for param in ("weight", "bias")}


def _mlp(sd, x, relu):
    slots = sorted({int(k.split(".")[1]) for k in sd})
    for i, slot in enumerate(slots):
        x = x @ sd[f"layers.{slot}.weight"].T + sd[f"layers.{slot}.bias"]
        if relu and i < len(slots) - 1:
            x = x.clamp(min=0)
    return x[:, 0]


def test_relu_head_runs_with_its_relus(tmp_path, tiny_files):
    sd = _relu_head_sd(24)
    torch.save(sd, tmp_path / "ava+logos-l14-reluMSE.pth")
    clip_dir = tiny_files["aesthetic"]["clip_path"]
    verifier = load_verifier(tmp_path / "ava+logos-l14-reluMSE.pth", device="cpu",
                             clip_path=clip_dir)
    assert verifier.name == "aesthetic" and verifier.head.relu
    images = [_random_rgb(40, 30, seed=s) for s in range(3)]
    embeds = verifier.encoder.image_embeds(images)
    torch.testing.assert_close(verifier(images, ""), _mlp(sd, embeds, relu=True))
    assert not torch.allclose(_mlp(sd, embeds, relu=False), _mlp(sd, embeds, relu=True))
    linear = load_verifier("aesthetic", device="cpu", clip_path=clip_dir, head_activation="none",
                           path=tmp_path / "ava+logos-l14-reluMSE.pth")
    torch.testing.assert_close(linear(images, ""), _mlp(sd, embeds, relu=False))


def test_unknown_head_layout_needs_an_explicit_activation():
    sd = {k.replace("layers.11.", "layers.12."): v for k, v in _relu_head_sd(8).items()}
    with pytest.raises(ValueError, match="head_activation"):
        MLPHead.from_state_dict(sd)
    assert MLPHead.from_state_dict(sd, activation="relu").relu
    with pytest.raises(ValueError, match="unknown head activation"):
        MLPHead.from_state_dict(sd, activation="gelu")


# ----- batched scoring: mixed sizes and modes in one call, low precision ----------------------


def _mixed_images():
    rgb = _random_rgb(70, 45, seed=11)
    return [rgb, _random_rgb(5, 3, seed=12), rgb.convert("L"), _rgba_half_transparent(33, 52),
            rgb.quantize(colors=32), _random_rgb(96, 64, seed=13), rgb.convert("LA")]


PROMPTS7 = ["a cat", "dogs", "a photo of a dog", "a red cat", "abcd", "cat", LONG_PROMPT]


@pytest.mark.parametrize("name", ["clipscore", "pickscore", "aesthetic", "hpsv2",
                                  "image-reward"])
def test_mixed_sizes_and_modes_score_in_one_call(verifiers, name):
    verifier = verifiers[name]
    images = _mixed_images()
    verifier.batch_size = 3
    together = verifier(images, PROMPTS7)
    verifier.batch_size = 8
    one_by_one = torch.cat([verifier(images[i:i + 1], PROMPTS7[i:i + 1]) for i in range(7)])
    assert together.shape == (7,) and torch.isfinite(together).all()
    torch.testing.assert_close(together, one_by_one, rtol=1e-4, atol=1e-4)


def _low_precision_close(verifiers, tiny_files, name, dtype, device):
    """Loaded in `dtype` on `device`, scores stay near the float32 CPU ones (tiny random
    models, so the bound is loose; it catches a broken cast or device mix-up)."""
    images = _mixed_images()
    reference = verifiers[name](images, PROMPTS7)
    verifier = load_verifier(name, device=device, dtype=dtype, batch_size=3, **tiny_files[name])
    low = verifier(images, PROMPTS7)
    assert low.dtype == torch.float32 and low.device.type == "cpu"
    spread = float(reference.max() - reference.min()) + 1e-3
    assert (low - reference).abs().max() < 0.1 * spread + 0.05, (low, reference)


ALL = ["clipscore", "pickscore", "aesthetic", "hpsv2", "image-reward"]


@pytest.mark.parametrize("name", ALL)
def test_bfloat16_on_cpu(verifiers, tiny_files, name):
    _low_precision_close(verifiers, tiny_files, name, torch.bfloat16, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ALL)
def test_low_precision_on_cuda(verifiers, tiny_files, name, dtype):
    _low_precision_close(verifiers, tiny_files, name, dtype, "cuda")
