"""Verifiers, offline: tiny random checkpoints in each real checkpoint's key layout.

Every built-in is loaded through `load_verifier` from files written under tmp_path, so the
weight discovery, key conversion, preprocessing and batching are the ones used on real files.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from lotts.verifiers import (
    VerifierWeightsNotFoundError,
    available_verifiers,
    check_scores,
    load_verifier,
)
from lotts.verifiers._layers import ImageTransform, MLPHead
from lotts.verifiers.hpsv2 import clip_config_from_openclip, convert_openclip_state_dict
from lotts.verifiers.image_reward import (
    REWARD_MEAN,
    REWARD_STD,
    convert_image_reward_state_dict,
    text_config_from,
    vision_config_from,
)

PROMPTS = ["a cat", "a photo of a dog", "abcd", "a red cat", "dogs"]
IMAGE_SIZES = [(40, 48), (64, 64), (50, 30), (32, 32), (70, 45)]
ENV_VARS = ["LOTTS_CLIPSCORE_PATH", "LOTTS_PICKSCORE_PATH", "LOTTS_PICKSCORE_PROCESSOR_PATH",
            "LOTTS_AESTHETIC_PATH", "LOTTS_AESTHETIC_CLIP_PATH", "LOTTS_HPSV2_PATH",
            "LOTTS_HPSV2_TOKENIZER_PATH", "LOTTS_IMAGEREWARD_PATH",
            "LOTTS_IMAGEREWARD_TOKENIZER_PATH"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No environment pointers and an empty Hugging Face cache: only what a test writes."""
    import huggingface_hub.constants as hub_constants
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# ----- tiny files in the real layouts ---------------------------------------------------------


def _byte_chars() -> list[str]:
    """GPT-2/CLIP byte-to-unicode alphabet, so every byte has a token."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in kept]
    return [chr(c) for c in kept] + [chr(256 + i) for i in range(len(extra))]


@pytest.fixture(scope="module")
def clip_tokenizer_dir(tmp_path_factory):
    from transformers import CLIPTokenizer
    chars = _byte_chars()
    merges = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>")]
    tokens = chars + [c + "</w>" for c in chars] + [a + b for a, b in merges]
    vocab = {token: i for i, token in enumerate(tokens + ["<|startoftext|>", "<|endoftext|>"])}
    folder = tmp_path_factory.mktemp("clip-tokenizer")
    CLIPTokenizer(vocab=vocab, merges=merges).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def bert_tokenizer_dir(tmp_path_factory):
    from transformers import BertTokenizer
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz",
             "a", "cat", "dog", "photo", "of", "red", "##s"]
    folder = tmp_path_factory.mktemp("bert-tokenizer")
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(words)) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(str(folder))
    return folder


def _tokenizer(folder):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(folder))


def _save_tiny_clip(folder, tokenizer_dir, projection_dim=24, with_tokenizer=True):
    """A tiny transformers CLIPModel folder, as `save_pretrained` writes PickScore/CLIP."""
    from transformers import CLIPConfig, CLIPModel
    tokenizer = _tokenizer(tokenizer_dir)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=projection_dim)
    model = CLIPModel(config).eval()
    with torch.no_grad():  # a shared direction, so cosines are positive (CLIPScore clamps at 0)
        shared = torch.randn(32)
        model.vision_model.post_layernorm.bias.copy_(shared)
        model.text_model.final_layer_norm.bias.copy_(shared)
        model.visual_projection.weight.copy_(model.text_projection.weight)
    model.save_pretrained(str(folder))
    if with_tokenizer:
        _save_processor(folder, tokenizer)
    return folder


def _save_processor(folder, tokenizer, size=32):
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size},
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711]}))


def _rand(*shape, scale=0.05):
    return torch.randn(*shape) * scale


def _layer_norm(sd, key, width):
    sd[f"{key}.weight"] = 1.0 + _rand(width)
    sd[f"{key}.bias"] = _rand(width)


def _linear(sd, key, out_features, in_features, bias=True, scale=0.05):
    sd[f"{key}.weight"] = _rand(out_features, in_features, scale=scale)
    if bias:
        sd[f"{key}.bias"] = _rand(out_features, scale=scale)


def _mlp_head_sd(in_features, prefix="layers."):
    """The improved-aesthetic-predictor / ImageReward head, real widths and keys."""
    sd = {}
    for index, (out_f, in_f) in zip((0, 2, 4, 6, 7), ((1024, in_features), (128, 1024),
                                                         (64, 128), (16, 64), (1, 16))):
        _linear(sd, f"{prefix}{index}", out_f, in_f, scale=1.0 / math.sqrt(in_f))
    return sd


def _openclip_block(sd, prefix, width, mlp):
    _layer_norm(sd, f"{prefix}.ln_1", width)
    sd[f"{prefix}.attn.in_proj_weight"] = _rand(3 * width, width, scale=0.2)
    sd[f"{prefix}.attn.in_proj_bias"] = _rand(3 * width)
    _linear(sd, f"{prefix}.attn.out_proj", width, width, scale=0.2)
    _layer_norm(sd, f"{prefix}.ln_2", width)
    _linear(sd, f"{prefix}.mlp.c_fc", mlp, width, scale=0.2)
    _linear(sd, f"{prefix}.mlp.c_proj", width, mlp, scale=0.2)


def tiny_openclip_state_dict(vocab, width=64, layers=2, patch=8, image=32, embed=32, ctx=77):
    """OpenCLIP ViT state dict (HPSv2's layout: `visual.conv1.weight`, fused `in_proj`, ...)."""
    torch.manual_seed(1)
    grid = image // patch
    sd = {"visual.class_embedding": _rand(width, scale=0.5),
          "visual.positional_embedding": _rand(grid * grid + 1, width, scale=0.5),
          "visual.conv1.weight": _rand(width, 3, patch, patch, scale=0.2),
          "visual.proj": _rand(width, embed, scale=0.2),
          "token_embedding.weight": _rand(vocab, width, scale=0.5),
          "positional_embedding": _rand(ctx, width, scale=0.1),
          "text_projection": _rand(width, embed, scale=0.2),
          "logit_scale": torch.tensor(math.log(100.0))}
    _layer_norm(sd, "visual.ln_pre", width)
    _layer_norm(sd, "visual.ln_post", width)
    _layer_norm(sd, "ln_final", width)
    for i in range(layers):
        _openclip_block(sd, f"visual.transformer.resblocks.{i}", width, 2 * width)
        _openclip_block(sd, f"transformer.resblocks.{i}", width, 2 * width)
    return sd


def _bert_attention(sd, prefix, width, kv_width):
    _linear(sd, f"{prefix}.self.query", width, width, scale=0.2)
    _linear(sd, f"{prefix}.self.key", width, kv_width, scale=0.2)
    _linear(sd, f"{prefix}.self.value", width, kv_width, scale=0.2)
    _linear(sd, f"{prefix}.output.dense", width, width, scale=0.2)
    _layer_norm(sd, f"{prefix}.output.LayerNorm", width)


def tiny_image_reward_state_dict(vocab, v_width=64, t_width=64, layers=2, patch=8, image=32,
                                 max_positions=40, proj=16):
    """`ImageReward.pt` layout: timm ViT under blip.visual_encoder, BLIP "med" BERT with
    crossattention under blip.text_encoder, contrastive projections, the MLP head."""
    torch.manual_seed(2)
    grid = image // patch
    v = "blip.visual_encoder"
    sd = {f"{v}.cls_token": _rand(1, 1, v_width, scale=0.5),
          f"{v}.pos_embed": _rand(1, grid * grid + 1, v_width, scale=0.5),
          f"{v}.patch_embed.proj.weight": _rand(v_width, 3, patch, patch, scale=0.2),
          f"{v}.patch_embed.proj.bias": _rand(v_width)}
    _layer_norm(sd, f"{v}.norm", v_width)
    for i in range(layers):
        block = f"{v}.blocks.{i}"
        _layer_norm(sd, f"{block}.norm1", v_width)
        _linear(sd, f"{block}.attn.qkv", 3 * v_width, v_width, scale=0.2)
        _linear(sd, f"{block}.attn.proj", v_width, v_width, scale=0.2)
        _layer_norm(sd, f"{block}.norm2", v_width)
        _linear(sd, f"{block}.mlp.fc1", 4 * v_width, v_width, scale=0.2)
        _linear(sd, f"{block}.mlp.fc2", v_width, 4 * v_width, scale=0.2)
    t = "blip.text_encoder"
    sd[f"{t}.embeddings.word_embeddings.weight"] = _rand(vocab, t_width, scale=0.5)
    sd[f"{t}.embeddings.position_embeddings.weight"] = _rand(max_positions, t_width, scale=0.1)
    sd[f"{t}.embeddings.position_ids"] = torch.arange(max_positions).expand(1, -1)
    _layer_norm(sd, f"{t}.embeddings.LayerNorm", t_width)
    for i in range(layers):
        layer = f"{t}.encoder.layer.{i}"
        _bert_attention(sd, f"{layer}.attention", t_width, t_width)
        _bert_attention(sd, f"{layer}.crossattention", t_width, v_width)
        _linear(sd, f"{layer}.intermediate.dense", 2 * t_width, t_width, scale=0.2)
        _linear(sd, f"{layer}.output.dense", t_width, 2 * t_width, scale=0.2)
        _layer_norm(sd, f"{layer}.output.LayerNorm", t_width)
    _linear(sd, "blip.vision_proj", proj, v_width)
    _linear(sd, "blip.text_proj", proj, t_width)
    sd.update(_mlp_head_sd(t_width, prefix="mlp.layers."))
    return sd


def _images(seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            for w, h in IMAGE_SIZES]


def assert_behaves(verifier, prompts=PROMPTS):
    """Shape (n,), finite, batch-independent, deterministic, image-sensitive."""
    images = _images()
    verifier.batch_size = 2
    scores = verifier(images, prompts)
    assert scores.shape == (len(images),) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()
    one_by_one = torch.cat([verifier(images[i:i + 1], prompts[i:i + 1]) for i in range(5)])
    verifier.batch_size = 8
    torch.testing.assert_close(verifier(images, prompts), scores, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(one_by_one, scores, rtol=1e-4, atol=1e-4)
    assert torch.equal(verifier(images, prompts), verifier(images, prompts))
    other = verifier(_images(seed=1), prompts)
    assert not torch.allclose(other, scores), "scores ignore the image content"
    return scores


# ----- API: check_scores, callables, missing weights -----------------------------------------


def test_available_verifiers():
    assert available_verifiers() == ["aesthetic", "clipscore", "hpsv2", "image-reward",
                                     "pickscore", "stat-colorfulness", "stat-contrast",
                                     "stat-sharpness", "world-clean-a", "world-clean-b"]


def test_check_scores_accepts_and_normalises():
    out = check_scores([1, 2.5, -3], 3)
    assert out.dtype == torch.float32 and out.tolist() == [1.0, 2.5, -3.0]
    assert check_scores(torch.ones(4, 1, dtype=torch.float64), 4).shape == (4,)


@pytest.mark.parametrize("scores, n, match", [
    (torch.ones(3), 4, "shape"), (torch.ones(2, 2), 4, "shape"),
    (torch.tensor([1.0, float("nan")]), 2, "non-finite"),
    (torch.tensor([float("inf"), 0.0]), 2, "non-finite"), ("high", 1, "expected a tensor")])
def test_check_scores_rejects(scores, n, match):
    with pytest.raises(ValueError, match=match):
        check_scores(scores, n)


def test_user_callable_passes_through():
    def brightness(images, prompts):
        return torch.tensor([float(np.asarray(im).mean()) for im in images])
    verifier = load_verifier(brightness)
    images = _images()
    torch.testing.assert_close(verifier(images, PROMPTS), brightness(images, PROMPTS))
    assert verifier(images, "one prompt for all").shape == (5,)
    with pytest.raises(ValueError, match="5 images but 2 prompts"):
        verifier(images, PROMPTS[:2])
    broken = load_verifier(lambda images, prompts: torch.full((len(images),), float("nan")))
    with pytest.raises(ValueError, match="non-finite"):
        broken(images, PROMPTS)
    with pytest.raises(ValueError, match="shape"):
        load_verifier(lambda images, prompts: torch.zeros(1))(images, PROMPTS)


@pytest.mark.parametrize("name, file_hint, env_var", [
    ("clipscore", "config.json", "LOTTS_CLIPSCORE_PATH"),
    ("pickscore", "config.json", "LOTTS_PICKSCORE_PATH"),
    ("aesthetic", "sac+logos+ava1-l14-linearMSE.pth", "LOTTS_AESTHETIC_PATH"),
    ("hpsv2", "HPS_v2.1_compressed.pt", "LOTTS_HPSV2_PATH"),
    ("image-reward", "ImageReward.pt", "LOTTS_IMAGEREWARD_PATH")])
def test_missing_weights_say_what_to_put_where(name, file_hint, env_var, tmp_path):
    with pytest.raises(VerifierWeightsNotFoundError) as info:
        load_verifier(name, device="cpu")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for part in (file_hint, env_var, "path=", "allow_download" if name != "aesthetic" else name):
        assert part in message, f"{part!r} missing from: {message}"
    with pytest.raises(VerifierWeightsNotFoundError, match="does not exist"):
        load_verifier(name, device="cpu", path=tmp_path / "nowhere")


def test_missing_tokenizer_is_reported(tmp_path):
    torch.save(tiny_image_reward_state_dict(vocab=50), tmp_path / "ImageReward.pt")
    with pytest.raises(VerifierWeightsNotFoundError, match="LOTTS_IMAGEREWARD_TOKENIZER_PATH"):
        load_verifier("image-reward", device="cpu", path=tmp_path / "ImageReward.pt")


def test_unknown_spec():
    with pytest.raises(ValueError, match="unknown verifier"):
        load_verifier("no-such-verifier")


# ----- preprocessing and head ----------------------------------------------------------------


def test_image_transform_resizes_short_side_and_center_crops():
    image = Image.new("RGB", (90, 60), (255, 0, 128))
    pixels = ImageTransform(size=32, crop=24)([image, image.convert("L").convert("RGB")])
    assert pixels.shape == (2, 3, 24, 24)
    mean, std = torch.tensor(ImageTransform.mean), torch.tensor(ImageTransform.std)
    expected = (torch.tensor([255, 0, 128]) / 255.0 - mean) / std
    torch.testing.assert_close(pixels[0, :, 12, 12], expected.float(), atol=1e-2, rtol=0)
    ramp = Image.fromarray(np.tile(np.arange(100, dtype=np.uint8), (50, 1)))  # 100 wide x 50 high
    crop = ImageTransform(size=50, crop=50, mean=(0.0,) * 3, std=(1.0,) * 3)([ramp])
    assert abs(float(crop[0, 0, 0, 0]) * 255 - 25) <= 1  # the centre 50 columns: 25..74


def test_mlp_head_matches_real_layout():
    sd = _mlp_head_sd(32)
    head = MLPHead.from_state_dict(sd)
    assert set(head.state_dict()) == set(sd)
    x = torch.randn(3, 32)
    w = [sd[f"layers.{i}.weight"] for i in (0, 2, 4, 6, 7)]
    b = [sd[f"layers.{i}.bias"] for i in (0, 2, 4, 6, 7)]
    expected = x
    for weight, bias in zip(w, b):
        expected = expected @ weight.T + bias  # no activations, as in both originals
    torch.testing.assert_close(head(x), expected[:, 0])
    with pytest.raises(ValueError, match="unexpected key"):
        MLPHead.from_state_dict({**sd, "extra.weight": torch.zeros(1)})


# ----- clipscore / pickscore / aesthetic: transformers CLIP folders ---------------------------


def test_clipscore(tmp_path, clip_tokenizer_dir):
    folder = _save_tiny_clip(tmp_path / "clip", clip_tokenizer_dir)
    verifier = load_verifier("clipscore", device="cpu", path=folder)
    scores = assert_behaves(verifier)
    cos = verifier.encoder.cosine(_images(), PROMPTS)
    torch.testing.assert_close(scores, (100 * cos).clamp(min=0))


def test_clipscore_from_env_var_and_path_spec(tmp_path, clip_tokenizer_dir, monkeypatch):
    folder = _save_tiny_clip(tmp_path / "clip", clip_tokenizer_dir)
    monkeypatch.setenv("LOTTS_CLIPSCORE_PATH", str(folder))
    from_env = load_verifier("CLIPScore", device="cpu")(_images(), PROMPTS)
    from_path = load_verifier(str(folder), device="cpu")(_images(), PROMPTS)
    torch.testing.assert_close(from_env, from_path)


def _fake_hub_snapshot(tmp_path, repo_id):
    """The folder a cached `repo_id` snapshot lives in, in huggingface_hub's cache layout."""
    repo = tmp_path / "empty-hub-cache" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    return repo / "snapshots" / ("0" * 40)


def test_weights_found_in_hub_cache(tmp_path, clip_tokenizer_dir):
    _save_tiny_clip(_fake_hub_snapshot(tmp_path, "openai/clip-vit-large-patch14"),
                    clip_tokenizer_dir)
    assert load_verifier("clipscore", device="cpu")(_images(), PROMPTS).shape == (5,)
    sd = tiny_openclip_state_dict(vocab=len(_tokenizer(clip_tokenizer_dir)))
    snapshot = _fake_hub_snapshot(tmp_path, "xswu/HPSv2")
    snapshot.mkdir(parents=True)
    torch.save({"state_dict": sd}, snapshot / "HPS_v2.1_compressed.pt")
    verifier = load_verifier("hpsv2", device="cpu", tokenizer_path=clip_tokenizer_dir)
    assert verifier(_images(), PROMPTS).shape == (5,)


def test_pickscore_matches_transformers_forward(tmp_path, clip_tokenizer_dir):
    from transformers import CLIPModel
    model_dir = _save_tiny_clip(tmp_path / "PickScore_v1", clip_tokenizer_dir, with_tokenizer=False)
    processor_dir = tmp_path / "processor"
    _save_processor(processor_dir, _tokenizer(clip_tokenizer_dir))
    verifier = load_verifier("pickscore", device="cpu", path=model_dir,
                             processor_path=processor_dir)
    scores = assert_behaves(verifier)
    model = CLIPModel.from_pretrained(str(model_dir)).eval()
    tokens = _tokenizer(clip_tokenizer_dir)(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                       pixel_values=verifier.encoder.transform(_images())).logits_per_image
    torch.testing.assert_close(scores, logits.diagonal(), rtol=1e-4, atol=1e-4)


def test_pickscore_without_tokenizer_reports_processor(tmp_path, clip_tokenizer_dir):
    model_dir = _save_tiny_clip(tmp_path / "PickScore_v1", clip_tokenizer_dir, with_tokenizer=False)
    with pytest.raises(VerifierWeightsNotFoundError, match="LOTTS_PICKSCORE_PROCESSOR_PATH"):
        load_verifier("pickscore", device="cpu", path=model_dir)


def test_aesthetic(tmp_path, clip_tokenizer_dir):
    from safetensors.torch import save_file
    clip_dir = _save_tiny_clip(tmp_path / "clip-vit-l14", clip_tokenizer_dir, projection_dim=24)
    torch.manual_seed(3)
    torch.save(_mlp_head_sd(24), tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    verifier = load_verifier("aesthetic", device="cpu", clip_path=clip_dir,
                             path=tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    scores = assert_behaves(verifier)
    torch.testing.assert_close(verifier(_images(), ["x"] * 5), scores)  # the prompt is unused
    embeds = verifier.encoder.image_embeds(_images())
    torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(5))
    save_file(_mlp_head_sd(24), str(tmp_path / "head.safetensors"))
    assert load_verifier("aesthetic", device="cpu", clip_path=clip_dir,
                         path=tmp_path / "head.safetensors")(_images(), PROMPTS).shape == (5,)
    torch.save(_mlp_head_sd(16), tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="768"):
        load_verifier("aesthetic", device="cpu", clip_path=clip_dir, path=tmp_path / "wrong.pth")


# ----- hpsv2: OpenCLIP state dict -> CLIPModel ------------------------------------------------


def test_openclip_conversion_covers_every_key(clip_tokenizer_dir):
    from transformers import CLIPModel
    sd = tiny_openclip_state_dict(vocab=len(_tokenizer(clip_tokenizer_dir)))
    converted, ignored = convert_openclip_state_dict({**sd, "attn_mask": torch.zeros(77, 77)})
    assert ignored == ["attn_mask"]
    config = clip_config_from_openclip(sd, eos_token_id=1, vision_heads=4, text_heads=2)
    assert set(converted) == set(CLIPModel(config).state_dict())
    q, k, v = (converted[f"vision_model.encoder.layers.1.self_attn.{n}_proj.weight"]
               for n in "qkv")
    fused = sd["visual.transformer.resblocks.1.attn.in_proj_weight"]
    assert torch.equal(torch.cat([q, k, v]), fused)
    assert torch.equal(converted["visual_projection.weight"], sd["visual.proj"].T)
    with pytest.raises(ValueError, match="unknown OpenCLIP checkpoint key"):
        convert_openclip_state_dict({**sd, "visual.transformer.resblocks.0.ls_1.gamma": q})


def _openclip_tower(x, sd, prefix, heads, mask=None):
    """OpenCLIP's residual blocks with torch's own nn.MultiheadAttention (its real module)."""
    width = x.shape[-1]
    blocks = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)}
    for i in sorted(blocks):
        p = f"{prefix}{i}."
        attn = nn.MultiheadAttention(width, heads, batch_first=True)
        attn.load_state_dict({"in_proj_weight": sd[p + "attn.in_proj_weight"],
                              "in_proj_bias": sd[p + "attn.in_proj_bias"],
                              "out_proj.weight": sd[p + "attn.out_proj.weight"],
                              "out_proj.bias": sd[p + "attn.out_proj.bias"]})
        y = F.layer_norm(x, (width,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        x = x + attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        y = F.layer_norm(x, (width,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        y = F.gelu(F.linear(y, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"]))
        x = x + F.linear(y, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
    return x


def openclip_reference_score(sd, pixels, ids, vision_heads, text_heads):
    """100 * cos of OpenCLIP's encode_image / encode_text, written from its definition."""
    conv = sd["visual.conv1.weight"]
    x = F.conv2d(pixels, conv, stride=conv.shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([sd["visual.class_embedding"].expand(len(x), 1, -1), x], dim=1)
    x = x + sd["visual.positional_embedding"]
    x = F.layer_norm(x, x.shape[-1:], sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    x = _openclip_tower(x, sd, "visual.transformer.resblocks.", vision_heads)
    image = F.layer_norm(x[:, 0], x.shape[-1:], sd["visual.ln_post.weight"],
                         sd["visual.ln_post.bias"]) @ sd["visual.proj"]
    t = sd["token_embedding.weight"][ids] + sd["positional_embedding"]
    causal = torch.full((ids.shape[1],) * 2, float("-inf")).triu(1)
    t = _openclip_tower(t, sd, "transformer.resblocks.", text_heads, mask=causal)
    t = F.layer_norm(t, t.shape[-1:], sd["ln_final.weight"], sd["ln_final.bias"])
    text = t[torch.arange(len(ids)), ids.argmax(dim=-1)] @ sd["text_projection"]
    return 100 * F.cosine_similarity(image, text, dim=-1)


def test_hpsv2_matches_openclip_reference(tmp_path, clip_tokenizer_dir):
    tokenizer = _tokenizer(clip_tokenizer_dir)
    sd = tiny_openclip_state_dict(vocab=len(tokenizer))
    torch.save({"epoch": 1, "state_dict": sd}, tmp_path / "HPS_v2.1_compressed.pt")
    verifier = load_verifier("hpsv2", device="cpu", path=tmp_path,
                             tokenizer_path=clip_tokenizer_dir, vision_heads=4, text_heads=2)
    scores = assert_behaves(verifier)
    ids = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        expected = openclip_reference_score(sd, verifier.encoder.transform(_images()), ids, 4, 2)
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)


def test_hpsv2_fp16_checkpoint_and_default_heads(tmp_path, clip_tokenizer_dir):
    sd = tiny_openclip_state_dict(vocab=len(_tokenizer(clip_tokenizer_dir)))
    half = {k: v.half() for k, v in sd.items()}  # the "compressed" files store float16
    torch.save({"state_dict": half}, tmp_path / "HPS_v2_compressed.pt")
    verifier = load_verifier(tmp_path, device="cpu", tokenizer_path=clip_tokenizer_dir)
    assert verifier.name == "hpsv2" and verifier.encoder.model.dtype == torch.float32
    assert verifier.encoder.model.config.vision_config.num_attention_heads == 1  # 64 / 64
    scores = verifier(_images(), PROMPTS)
    bf16 = load_verifier(tmp_path / "HPS_v2_compressed.pt", device="cpu", dtype="bfloat16",
                         tokenizer_path=clip_tokenizer_dir)
    assert bf16.encoder.model.dtype == torch.bfloat16
    low = bf16(_images(), PROMPTS)
    assert low.dtype == torch.float32 and (low - scores).abs().max() < 5.0  # scores are x100


# ----- image-reward: ImageReward.pt -> BlipVisionModel + BlipTextModel + head ------------------


def test_image_reward_conversion_covers_every_key(bert_tokenizer_dir):
    from transformers import BlipTextModel, BlipVisionModel
    sd = tiny_image_reward_state_dict(vocab=len(_tokenizer(bert_tokenizer_dir)) + 2)
    weights = convert_image_reward_state_dict(sd)
    assert sorted(weights.ignored) == sorted([
        "blip.vision_proj.weight", "blip.vision_proj.bias", "blip.text_proj.weight",
        "blip.text_proj.bias", "blip.text_encoder.embeddings.position_ids"])
    assert len(weights.vision) + len(weights.text) + len(weights.head) + len(weights.ignored) \
        == len(sd)
    vision = BlipVisionModel(vision_config_from(weights.vision, heads=4))
    text = BlipTextModel(text_config_from(weights.text, heads=2), add_pooling_layer=False)
    assert set(weights.vision) == set(vision.state_dict())
    assert set(weights.text) == set(text.state_dict())
    assert set(weights.head) == {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7)
                                 for p in ("weight", "bias")}
    q_bias = sd["blip.visual_encoder.blocks.0.attn.qkv.bias"]
    with pytest.raises(ValueError, match="unknown"):
        convert_image_reward_state_dict({**sd, "blip.visual_encoder.blocks.0.ls1.gamma": q_bias})


def timm_vit_reference(sd, pixels, heads):
    """BLIP's timm-style ViT forward, from its definition (pre-norm blocks, final norm)."""
    v = "blip.visual_encoder."
    conv = sd[v + "patch_embed.proj.weight"]
    x = F.conv2d(pixels, conv, sd[v + "patch_embed.proj.bias"], stride=conv.shape[-1])
    x = torch.cat([sd[v + "cls_token"].expand(len(x), 1, -1), x.flatten(2).transpose(1, 2)], 1)
    x = x + sd[v + "pos_embed"]
    batch, tokens, width = x.shape
    for i in range(2):
        p = f"{v}blocks.{i}."
        y = F.layer_norm(x, (width,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        qkv = F.linear(y, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
        q, k, val = qkv.reshape(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, val).transpose(1, 2).reshape(batch, tokens, width)
        x = x + F.linear(y, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        y = F.layer_norm(x, (width,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        y = F.gelu(F.linear(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
        x = x + F.linear(y, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    return F.layer_norm(x, (width,), sd[v + "norm.weight"], sd[v + "norm.bias"], eps=1e-6)


def test_image_reward(tmp_path, bert_tokenizer_dir):
    tokenizer = _tokenizer(bert_tokenizer_dir)
    sd = tiny_image_reward_state_dict(vocab=len(tokenizer) + 2)  # + BLIP's [DEC], [ENC]
    torch.save(sd, tmp_path / "ImageReward.pt")
    verifier = load_verifier("image-reward", device="cpu", path=tmp_path / "ImageReward.pt",
                             tokenizer_path=bert_tokenizer_dir, vision_heads=4, text_heads=2)
    scores = assert_behaves(verifier)
    other_prompts = verifier(_images(), ["dogs"] * 5)
    assert not torch.allclose(other_prompts, scores), "scores ignore the prompt"
    pixels = verifier.transform(_images())
    with torch.no_grad():
        image_tokens = verifier.vision(pixel_values=pixels).last_hidden_state
        torch.testing.assert_close(image_tokens, timm_vit_reference(sd, pixels, heads=4),
                                   rtol=1e-4, atol=1e-4)
        tokens = tokenizer(PROMPTS, padding="max_length", max_length=35, return_tensors="pt")
        assert (tokens.input_ids[:, 0] == tokenizer.cls_token_id).all()
        cls = verifier.text(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                            encoder_hidden_states=image_tokens).last_hidden_state[:, 0]
    raw = verifier.head(cls)
    torch.testing.assert_close(scores, (raw - REWARD_MEAN) / REWARD_STD)


def test_image_reward_path_spec_and_wrong_tokenizer(tmp_path, bert_tokenizer_dir,
                                                   clip_tokenizer_dir):
    torch.save(tiny_image_reward_state_dict(vocab=len(_tokenizer(bert_tokenizer_dir)) + 2),
               tmp_path / "ImageReward.pt")
    verifier = load_verifier(str(tmp_path / "ImageReward.pt"), device="cpu",
                             tokenizer_path=bert_tokenizer_dir)
    assert verifier.name == "image-reward"
    with pytest.raises(ValueError, match="wrong tokenizer"):
        load_verifier("image-reward", device="cpu", path=tmp_path / "ImageReward.pt",
                      tokenizer_path=clip_tokenizer_dir)
