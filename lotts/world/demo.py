"""What ``lotts demo`` runs by default: the trained miniature world.

``embedded_world()`` returns the fields of ``lotts.cli.demo.EmbeddedDefault``: a loader of
the committed StableDiffusionPipeline (64x64 shape scenes, trained from scratch by
``lotts.world.train``), the selection verifier ``world-clean-a``, the held-out
``world-clean-b``, and plain prompts whose candidates are often defective (the world's plain
captions yield planted-style defects at a measurable rate), so the report shows defects,
heatmaps, masks and their refinements.
"""
from __future__ import annotations

from typing import Any

DEMO_PROMPTS = (
    "a red circle above a blue square",
    "a yellow triangle",
    "a green square left of an orange circle",
    "a purple circle, a yellow square and a red triangle",
    "a blue triangle right of a green circle",
    "an orange square",
)
DEMO_PIPE_KWARGS = {"height": 64, "width": 64, "num_inference_steps": 20, "guidance_scale": 4.0}


def embedded_world() -> dict[str, Any]:
    from lotts import LoTTSConfig
    from lotts.world.evaluate import PIPELINE_DIR, load_pipeline

    return dict(
        load_pipe=load_pipeline,
        model=f"embedded:lotts-world ({PIPELINE_DIR})",
        verifier="world-clean-a",
        report_with=["world-clean-b"],
        prompts=list(DEMO_PROMPTS),
        pipe_kwargs=dict(DEMO_PIPE_KWARGS),
        config=LoTTSConfig(),
        notes=["The miniature world: 64x64 shape scenes from a StableDiffusionPipeline trained "
               "from scratch on CPU (python -m lotts.world.train); verifiers are small CNNs "
               "scoring how clean an image is (world-clean-a selects, world-clean-b is held "
               "out). Measured results: benchmarks/RESULTS.md (python benchmarks/world_eval.py)."],
    )
