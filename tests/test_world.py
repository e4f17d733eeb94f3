"""The miniature world: data generator, committed pipeline and verifiers, evaluation smoke."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lotts.world import scenes

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "lotts" / "world" / "assets"
CAPTION = re.compile(
    r"^(an? \w+ (circle|square|triangle))"
    r"(( (above|below|left of|right of) an? \w+ (circle|square|triangle))"
    r"|(, an? \w+ (circle|square|triangle) and an? \w+ (circle|square|triangle)))?$")


# ----- data generator ------------------------------------------------------------------------
def test_scenes_are_deterministic_by_seed():
    a = [scenes.sample_example(np.random.default_rng(7)) for _ in range(1)]
    b = [scenes.sample_example(np.random.default_rng(7)) for _ in range(1)]
    rng1, rng2 = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(20):
        x, y = scenes.sample_example(rng1), scenes.sample_example(rng2)
        assert x.prompt == y.prompt and np.array_equal(x.image, y.image)
        assert (x.defect is None) == (y.defect is None)
        if x.defect is not None:
            assert np.array_equal(x.defect.region, y.defect.region)
    assert a[0].prompt == b[0].prompt


def test_defects_cover_5_to_25_percent_and_change_the_region_only():
    rng = np.random.default_rng(11)
    for i in range(40):
        scene = scenes.sample_scene(rng)
        clean = scenes.render(scene)
        kind = scenes.DEFECT_KINDS[i % len(scenes.DEFECT_KINDS)]
        damaged, defect = scenes.plant_defect(clean, scene, rng, kind)
        assert defect.kind == kind and defect.region.shape == (scenes.SIZE, scenes.SIZE)
        assert defect.region.any()
        assert 0.04 <= defect.area <= 0.26, defect.area  # 5-25% up to the pixel grid
        changed = np.abs(damaged.astype(int) - clean.astype(int)).max(axis=2) > 1
        assert not (changed & ~defect.region).any()
        assert changed.any()


def test_captions_and_prompts_are_well_formed():
    rng = np.random.default_rng(5)
    for _ in range(200):
        ex = scenes.sample_example(rng)
        assert CAPTION.match(ex.caption), ex.caption
        for word in re.findall(r"an? (\w+) (?:circle|square|triangle)", ex.caption):
            assert word in scenes.COLOURS
        assert ex.prompt in (ex.caption, scenes.HIGH_QUALITY.format(ex.caption),
                             scenes.LOW_QUALITY.format(ex.caption))
        if ex.prompt.startswith("A low-quality"):
            assert ex.defect is not None
        if ex.prompt.startswith("A high-quality"):
            assert ex.defect is None
        assert ex.image.shape == (64, 64, 3) and ex.image.dtype == np.uint8


def test_plain_prompt_defect_rate_is_in_range():
    rng = np.random.default_rng(0)
    plain = [ex for ex in (scenes.sample_example(rng) for _ in range(600)) if ex.prompt == ex.caption]
    rate = np.mean([ex.defect is not None for ex in plain])
    assert len(plain) > 200 and 0.3 <= rate <= 0.5, rate


# ----- token grounding used in training ----------------------------------------------------
def _two_shape_scene():
    return scenes.Scene((scenes.Shape("circle", "red", (20.0, 20.0), 10.0),
                         scenes.Shape("triangle", "orange", (44.0, 44.0), 10.0)), ("white",),
                        caption="a red circle above an orange triangle")


def test_grounding_finds_the_quality_and_shape_words():
    from lotts.offline_tokenizers import clip_tokenizer
    from lotts.world.grounding import GroupTokens
    tok = clip_tokenizer()
    scene = _two_shape_scene()
    finder = GroupTokens(tok)
    low_prompt = scenes.LOW_QUALITY.format(scene.caption)
    low = tok(low_prompt).input_ids  # BOS a low - quality image of
    words = finder.positions(low_prompt, scene)
    assert words[0].nonzero().flatten().tolist() == [2, 3, 4]
    assert [low[i] for i in words[1].nonzero().flatten()] == tok("red circle",
                                                                add_special_tokens=False).input_ids
    assert [low[i] for i in words[2].nonzero().flatten()] == tok(
        "orange triangle", add_special_tokens=False).input_ids
    assert words[3].sum() == 0  # no third shape
    high = finder.positions(scenes.HIGH_QUALITY.format(scene.caption), scene)
    plain = finder.positions(scene.caption, scene)
    assert high[0].sum() == 0 and plain[0].sum() == 0  # only low-quality words are grounded
    assert plain[1].sum() == 2 and plain[2].sum() == 2
    table = finder.table([(scene.caption, low_prompt)], [scene])
    assert table.shape == (1, 3, 4, 77) and table.dtype == torch.bool
    assert torch.equal(table[0, 0], plain.bool()) and torch.equal(table[0, 1], words.bool())
    assert not table[0, 2].any()  # the empty prompt grounds nothing


def test_grounding_loss_is_zero_inside_and_one_minus_area_when_uniform():
    from lotts.world.grounding import LATENT, grounding_loss
    torch.manual_seed(0)
    regions = torch.zeros(2, 1, LATENT, LATENT)
    regions[0, 0, 3:9, 2:7] = 1
    regions[1, 0, 10:, 5:] = 1
    words = torch.zeros(2, 1, 7)
    words[:, 0, 3] = 1
    inside = torch.rand(2, LATENT * LATENT, 7)  # random mass on the other keys
    inside[..., 3] = regions.flatten(2)[:, 0] * 5  # the grounded key only inside the region
    inside = inside / inside.sum(-1, keepdim=True)
    valid = torch.ones(2, 1)
    assert grounding_loss([inside], words, regions, valid).item() < 1e-6
    uniform = torch.full((2, LATENT * LATENT, 7), 1 / 7)
    coarse = torch.full((2, (LATENT // 2) ** 2, 7), 1 / 7)  # a coarser layer pools the region
    expected = 1 - regions.mean(dim=(1, 2, 3)).mean()
    assert grounding_loss([uniform, coarse], words, regions, valid).item() == pytest.approx(
        expected.item(), abs=1e-5)
    assert grounding_loss([uniform], words, regions, torch.zeros(2, 1)).item() == 0.0


def test_grounding_regions_are_row_major_latent_cells():
    from lotts.world.grounding import LATENT, example_regions
    scene = scenes.Scene((scenes.Shape("circle", "red", (50.0, 10.0), 5.0),), ("white",),
                         caption="a red circle")
    region = np.zeros((scenes.SIZE, scenes.SIZE), bool)
    region[40:48, 4:12] = True  # rows 40-47 (y), columns 4-11 (x)
    regions = example_regions(scene, scenes.Defect("bite", region)).astype(np.float32)
    assert regions.shape == (4, LATENT, LATENT)
    assert np.unravel_index(regions[1].argmax(), regions[1].shape) == (2, 12)  # y=10, x=50
    assert regions[0][10:12, 1:3].min() == 1.0 and regions[0].sum() == 4.0
    assert regions[2:].sum() == 0
    assert example_regions(scene, None)[0].sum() == 0


def test_grounding_loss_pools_regions_for_coarse_layers_in_row_major_order():
    from lotts.world.grounding import LATENT, grounding_loss
    regions = torch.zeros(1, 1, LATENT, LATENT)
    regions[0, 0, :2, 12:] = 1  # top-right 2x4 cells -> top-right 1x2 cells at half resolution
    words = torch.ones(1, 1, 1)
    side = LATENT // 2
    right = torch.zeros(1, side * side, 1)
    right[0, 6:8, 0] = 1  # row 0, columns 6-7 of the 8x8 grid
    transposed = torch.zeros(1, side * side, 1)
    transposed[0, [6 * side, 7 * side], 0] = 1  # rows 6-7, column 0: the same cells transposed
    valid = torch.ones(1, 1)
    assert grounding_loss([right], words, regions, valid).item() == pytest.approx(0.0, abs=1e-6)
    assert grounding_loss([transposed], words, regions, valid).item() == pytest.approx(1.0)


def test_cross_attention_recorder_matches_the_default_processor():
    from diffusers.models.attention_processor import AttnProcessor2_0

    from lotts.world.grounding import install_recorder
    from lotts.world.train import build_unet_and_text
    torch.manual_seed(0)
    unet, text = build_unet_and_text()
    unet.eval()
    z, t = torch.randn(3, 4, 16, 16), torch.tensor([5, 500, 999])
    cond = text(torch.randint(0, 49000, (3, 77)))[0]
    with torch.no_grad():
        unet.set_attn_processor(AttnProcessor2_0())
        expected = unet(z, t, cond).sample
        recorder = install_recorder(unet)
        got = unet(z, t, cond).sample
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    layers = [name for name in unet.attn_processors if ".attn2." in name]
    assert len(recorder.maps) == len(layers) > 0
    for probs in recorder.maps:
        assert probs.shape[0] == 3 and probs.shape[-1] == 77
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:2]))


# ----- committed pipeline --------------------------------------------------------------------
def test_committed_world_is_small_and_float16():
    from safetensors import safe_open
    total = sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file())
    assert total < 20 * 2**20, f"world assets are {total / 2**20:.1f} MiB"
    for weights in (ASSETS / "pipeline").rglob("*.safetensors"):
        with safe_open(str(weights), "pt") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        assert dtypes <= {"F16", "I64"}, (weights, dtypes)


@pytest.fixture(scope="module")
def world_pipe():
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(str(ASSETS / "pipeline"), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_committed_pipeline_generates_64px_images(world_pipe):
    from diffusers import DDIMScheduler, UNet2DConditionModel
    assert isinstance(world_pipe.scheduler, DDIMScheduler)
    assert isinstance(world_pipe.unet, UNet2DConditionModel)
    assert world_pipe.vae_scale_factor == 4 and world_pipe.unet.config.sample_size == 16
    assert world_pipe.tokenizer.vocab_size == 49408
    ids = world_pipe.tokenizer("A low-quality image of a red circle.").input_ids
    assert ids[:6] == [49406, 320, 1042, 268, 3027, 2867]  # real CLIP ids
    out = world_pipe("a red circle", num_inference_steps=4, guidance_scale=4.0,
                     generator=torch.Generator().manual_seed(0), output_type="np").images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()
    assert out.std() > 0.02  # not a flat image


# ----- verifiers -----------------------------------------------------------------------------
def test_world_verifiers_load_and_rank_clean_above_defective():
    from lotts.verifiers import available_verifiers, load_verifier
    from lotts.world.evaluate import auroc
    assert {"world-clean-a", "world-clean-b"} <= set(available_verifiers())
    rng = np.random.default_rng(909)  # a stream neither verifier was trained on
    images, labels = [], []
    for i in range(80):
        scene = scenes.sample_scene(rng)
        image = scenes.render(scene)
        if i % 2:
            image, _ = scenes.plant_defect(image, scene, rng)
        images.append(image)
        labels.append(i % 2 == 0)
    from PIL import Image
    pil = [Image.fromarray(im) for im in images]
    labels = np.array(labels)
    for name in ("world-clean-a", "world-clean-b"):
        verifier = load_verifier(name, device="cpu")
        scores = verifier(pil, ["a scene"] * len(pil)).numpy()
        assert scores.shape == (80,) and np.isfinite(scores).all()
        assert scores[labels].mean() > scores[~labels].mean()
        assert auroc(scores, labels) > 0.75, (name, auroc(scores, labels))


def test_world_verifier_path_errors_are_clear(tmp_path):
    from lotts.verifiers import VerifierWeightsNotFoundError, load_verifier
    with pytest.raises(VerifierWeightsNotFoundError, match="world-clean-a"):
        load_verifier("world-clean-a", path=tmp_path)


# ----- evaluation ----------------------------------------------------------------------------
def test_metrics():
    from lotts.world.evaluate import auroc, iou, region_to_grid, top_mask
    assert auroc([0.1, 0.9, 0.8, 0.2], [0, 1, 1, 0]) == 1.0
    assert auroc([1, 1, 1, 1], [0, 1, 1, 0]) == 0.5
    assert np.isnan(auroc([1, 2], [1, 1]))
    assert iou([1, 1, 0], [1, 0, 0]) == 0.5
    heat = np.array([[0.0, 1.0], [1.0, 0.5]])
    assert top_mask(heat, 2).tolist() == [[False, True], [True, False]]
    region = np.zeros((64, 64), bool)
    region[:8, :6] = True
    grid = region_to_grid(region, (16, 16))
    assert grid[:2, :1].all() and grid[:2, 1].all() and not grid[:2, 2:].any()


def test_world_eval_smoke():
    sys.path.insert(0, str(ROOT))
    from benchmarks.world_eval import run, tables
    result = run(smoke=True)
    loc = result["localization"]["summary"]
    assert loc["cases"] == 3
    for variant in ("full", "no_propagation", "diff_only", "orig_only", "random"):
        assert 0.0 <= loc[f"{variant}_auroc"] <= 1.0
        assert 0.0 <= loc[f"{variant}_iou"] <= 1.0
    sc = result["scaling"]["summary"]
    steps = result["pipe_kwargs"]["num_inference_steps"]
    # LoTTS NFE at defaults (method doc): 3 * S * 2 + 3 * 3 + 3 * 2 * (S - t0) * 2, t0 = S / 2
    assert sc["lotts"]["nfe"] == 3 * steps * 2 + 9 + 6 * (steps - steps // 2) * 2
    assert sc["best_of_n"][3]["nfe"] == 3 * steps * 2
    assert np.isfinite(sc["lotts"]["held"]) and 0.0 <= sc["lotts"]["defect_rate"] <= 1.0
    faith = sc["faithfulness"]
    assert faith["refinements"] == 2 * 3 * 2
    assert 0.0 <= faith["mean_abs_change_outside"] < faith["mean_abs_change_inside"]
    assert "Localization" in tables(result)


# ----- training script -----------------------------------------------------------------------
def test_training_script_runs_every_stage_at_a_tiny_scale_and_refuses_a_mismatched_resume(tmp_path):
    import json

    from lotts.errors import WorldTrainingError
    from lotts.world import train
    from lotts.world.evaluate import load_pipeline
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    argv = ["--scale", "0.004", "--out", str(out), "--ckpt", str(ckpt), "--threads", "1"]
    assert train.main(argv) == 0
    log = json.loads((out / "train_log.json").read_text())
    stage = log["vae_diffusion_verifiers"]
    assert stage["diffusion_steps"] == 12 and np.isfinite(stage["denoising_final_loss"])
    assert 0.0 < stage["grounding_final_loss"] < 1.0
    assert stage["command"].endswith(" ".join(argv))
    for name in ("verifier_a", "verifier_b"):
        assert (out / name / "model.safetensors").is_file()
    pipe = load_pipeline(out / "pipeline")
    assert pipe.unet.config.attention_head_dim == [1, 2, 2]
    # float16 files that a plain from_pretrained loads as float32 throughout (issue 12, item 2)
    assert json.loads((out / "pipeline" / "text_encoder" / "config.json").read_text())["dtype"] == "float32"
    assert pipe.text_encoder.dtype == pipe.unet.dtype == torch.float32
    mismatched = ["--scale", "0.005", "--out", str(out), "--ckpt", str(ckpt), "--threads", "1",
                  "--stages", "diffusion"]
    with pytest.raises(WorldTrainingError, match="latents"):  # the cache is another data set's
        train.run_training(mismatched)
