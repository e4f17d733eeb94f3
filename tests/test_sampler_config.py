"""LoTTSConfig: validation, per-backbone defaults, step resolution and the NFE budget."""
from __future__ import annotations

import pytest

from lotts import LoTTSConfig
from lotts.config import stream_seed


@pytest.mark.parametrize("field,value", [
    ("num_seeds", 0), ("num_seeds", 1.5), ("num_refinements", -1), ("mask_ratio", 0.0),
    ("mask_ratio", 1.5), ("mask_ratio", -0.1), ("t0", -1), ("t0", 1.0), ("t0", "half"),
    ("lam", float("nan")), ("global_steps", -1), ("localization_level", 1.0),
    ("quality_prompts", ("good {}",)), ("quality_prompts", ("good", "bad {}")),
    ("token_selection", "nouns"), ("search", "bfs"), ("soft_mask_sigma", -1.0),
    ("refine_batch_size", 0), ("generate_batch_size", 0)])
def test_invalid_fields_name_themselves(field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        LoTTSConfig(**{field: value})


def test_defaults_follow_the_method() -> None:
    config = LoTTSConfig()
    assert (config.num_seeds, config.num_refinements, config.mask_ratio, config.lam) == (3, 2, 0.5, 1.0)
    assert config.quality_prompts == ("A high-quality image of {}.", "A low-quality image of {}.")
    assert (config.search, config.token_selection, config.soft_mask_sigma) == ("siblings", "content", 0.0)


@pytest.mark.parametrize("backbone,steps,t0,global_steps,level", [
    ("sd", 50, 25, 5, 25), ("sdxl", 50, 15, 5, 25), ("flux", 28, 1, 3, 14),
    ("sd", 4, 2, 1, 2), ("sdxl", 20, 6, 2, 10), ("flux", 4, 0, 1, 2)])
def test_per_backbone_resolution(backbone, steps, t0, global_steps, level) -> None:
    resolved = LoTTSConfig().resolved(backbone, steps)
    assert (resolved.t0, resolved.global_steps, resolved.localization_step) == (t0, global_steps, level)
    assert resolved.masked_stop == steps - global_steps


def test_explicit_t0_and_global_steps() -> None:
    assert LoTTSConfig(t0=10).resolved("sd", 50).t0 == 10
    assert LoTTSConfig(t0=0.2).resolved("flux", 50).t0 == 10
    assert LoTTSConfig(t0=2, global_steps=1).resolved("sd", 4).global_steps == 1
    with pytest.raises(ValueError, match="t0"):
        LoTTSConfig(t0=50).resolved("sd", 50)
    with pytest.raises(ValueError, match="global_steps"):
        LoTTSConfig(t0=45, global_steps=6).resolved("sd", 50)
    with pytest.raises(ValueError, match="backbone"):
        LoTTSConfig().resolved("kandinsky", 50)


def test_nfe_budget_and_matched_best_of_n() -> None:
    config = LoTTSConfig()
    # SD2.1: 3 x 50 x 2 base + 3 x 3 localization + 3 x 2 x 25 x 2 refinement
    assert config.lotts_nfe(50, "sd") == 300 + 9 + 300
    assert config.matched_best_of_n(50, "sd") == 6  # "about 6 full generations"
    assert config.lotts_nfe(28, "flux") == 3 * 28 + 9 + 3 * 2 * 27
    assert config.matched_best_of_n(28, "flux") == 9
    chain = LoTTSConfig(search="chain")
    assert chain.lotts_nfe(50, "sd") == 300 + 3 * 2 * 3 + 300
    assert LoTTSConfig(num_refinements=0).matched_best_of_n(50, "sdxl") == 3


def test_derived_seeds_are_stable() -> None:
    assert stream_seed(0, "refine", 3) == stream_seed(0, "refine", 3)
    assert stream_seed(0, "refine", 3) != stream_seed(0, "refine", 4)
    assert 0 <= stream_seed(2**62, "x") < 2**63


def test_fractional_t0_always_lands_inside_a_short_schedule():
    from lotts.config import LoTTSConfig

    resolved = LoTTSConfig(t0=0.9, global_steps=0).resolved("sd", 4)
    assert resolved.t0 == 3
