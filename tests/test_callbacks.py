"""callback_on_step_end during refinement: a callback sees the tensors it declares, with the
pipeline's own names and layout, or is refused before any work names what it cannot get."""
from __future__ import annotations

import pytest
from diffusers.callbacks import SDCFGCutoffCallback

from lotts import LoTTS, LoTTSConfig
from tests.test_sampler_support import (
    PROMPT,
    _one_thread,  # noqa: F401 (autouse fixture)
    brightness,
    call_kwargs,
    shared_pipeline,
)

# 4 steps, refinement from t0 = 2: steps 2 and 3 run in LoTTS' own loop.
CONFIG = LoTTSConfig(num_seeds=2, num_refinements=1, t0=2, refine_batch_size=2)
# SDCFGCutoffCallback keeps prompt_embeds[-1:], one row: diffusers' own loop needs batch 1.
ONE_PER_CALL = CONFIG.with_overrides(generate_batch_size=1)


class Recorder:
    """Records, per step, the names and shapes of the tensors it was handed."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, dict[str, tuple]]] = []

    def __call__(self, pipeline, step_index, timestep, callback_kwargs):
        self.seen.append((step_index, {k: tuple(v.shape) for k, v in callback_kwargs.items()}))
        return callback_kwargs


SD_INPUTS = ["latents", "prompt_embeds", "negative_prompt_embeds"]


@pytest.mark.parametrize("cutoff, refine_rows", [
    (2, 2 + 1),  # at a refinement step: step 2 guided, step 3 not
    (1, 1 + 1),  # before t0, in the pipeline's own call: refinement runs unguided from t0
])
def test_sd_cfg_cutoff_callback_is_followed_by_refinement(cutoff, refine_rows):
    """diffusers' own callback reads callback_kwargs["prompt_embeds"] at its cutoff step (a
    KeyError when that step was a refinement step) and turns guidance off; refinement steps
    follow it as the pipeline's loop does: an unguided step is one denoiser row, not two."""
    pipe = shared_pipeline("sd")
    callback = SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=cutoff)
    result = LoTTS(pipe, brightness, ONE_PER_CALL)(PROMPT, seed=0, callback_on_step_end=callback,
                                                   **call_kwargs("sd", steps=4))
    originals = [c for c in result.candidates if c.parent is None]
    guided_steps = cutoff + 1  # steps 0..cutoff run guided in __call__
    assert all(c.nfe == 2 * guided_steps + (4 - guided_steps) for c in originals)
    assert result.cost.nfe_by_phase["refine"] == 2 * refine_rows
    assert pipe._guidance_scale == 0.0  # as the pipeline's own call left it


def test_a_changed_conditioning_tensor_without_a_cutoff_is_refused_by_name():
    pipe = shared_pipeline("sd")

    def scale_embeds(pipe, i, t, tensors):
        if i == 3:
            tensors["prompt_embeds"] = tensors["prompt_embeds"] * 2
        return tensors

    with pytest.raises(RuntimeError, match=r"changed \['prompt_embeds'\] at step 3"):
        LoTTS(pipe, brightness, CONFIG)(PROMPT, seed=0, callback_on_step_end=scale_embeds,
                                        callback_on_step_end_tensor_inputs=SD_INPUTS,
                                        **call_kwargs("sd", steps=4))


def test_refinement_hands_the_declared_tensors_in_the_pipelines_layout():
    pipe = shared_pipeline("sd")
    recorder = Recorder()
    LoTTS(pipe, brightness, CONFIG)(PROMPT, seed=0, callback_on_step_end=recorder,
                                    callback_on_step_end_tensor_inputs=SD_INPUTS,
                                    **call_kwargs("sd", steps=4))
    base = [shapes for step, shapes in recorder.seen[:4]]  # the pipeline's own call
    refined = recorder.seen[4:]
    assert [step for step, _ in refined] == [2, 3]  # one batch of 2 refinements
    for _, shapes in refined:
        assert set(shapes) == set(SD_INPUTS)
        assert shapes == base[0]  # same names, same shapes as __call__ gave (2 rows each)


def test_tensors_refinement_cannot_provide_are_refused_up_front():
    pipe = shared_pipeline("sd")
    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))

    def callback(pipe, i, t, tensors):
        return tensors

    try:
        with pytest.raises(ValueError, match=r"asks for \['timestep_cond'\]"):
            LoTTS(pipe, brightness, CONFIG)(PROMPT, callback_on_step_end=callback,
                                            callback_on_step_end_tensor_inputs=["timestep_cond"],
                                            **call_kwargs("sd", steps=4))
    finally:
        hook.remove()
    assert not calls


@pytest.mark.parametrize("kind", ["sdxl", "flux"])
def test_every_pipeline_tensor_input_is_provided(kind):
    pipe = shared_pipeline(kind)
    names = list(type(pipe)._callback_tensor_inputs)
    seen: list[set] = []

    def callback(pipe, i, t, tensors):
        seen.append(set(tensors))
        return tensors

    LoTTS(pipe, brightness, CONFIG)(PROMPT, callback_on_step_end=callback,
                                    callback_on_step_end_tensor_inputs=names,
                                    **call_kwargs(kind, steps=4))
    assert len(seen) == 4 + 2 and all(s == set(names) for s in seen)
