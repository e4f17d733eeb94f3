"""The sampler side's one-way layers, checked on the import statements of the source tree, and
the names both the library and the CLI accept."""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every lotts / lotts_kernels module `path` imports, at top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] in ("lotts", "lotts_kernels")}


GRAPH = {module_name(p): imports_of(p) for package in ("lotts", "lotts_kernels")
         for p in (ROOT / package).rglob("*.py")}


def importers_of(prefix: str) -> set[str]:
    return {m for m, deps in GRAPH.items()
            if any(d == prefix or d.startswith(prefix + ".") for d in deps)}


# (module, modules it must never import)
FORBIDDEN = [
    ("lotts_kernels", ["lotts."]),
    ("lotts.backbones", ["lotts.sampler", "lotts.runs", "lotts.report", "lotts.cli"]),
    ("lotts.runs.prompts", ["lotts.runs.files", "lotts.runs.manifest", "lotts.runs.outputs",
                            "lotts.runs.runner", "lotts.report"]),
    ("lotts.runs.files", ["lotts.runs.manifest", "lotts.runs.outputs", "lotts.runs.runner"]),
    ("lotts.runs.manifest", ["lotts.runs.outputs", "lotts.runs.runner", "lotts.report"]),
    ("lotts.runs.outputs", ["lotts.runs.runner"]),
    ("lotts.report", ["lotts.runs.outputs", "lotts.runs.runner", "lotts.cli"]),
    ("lotts.sampler", ["lotts.runs", "lotts.report", "lotts.cli"]),
]


@pytest.mark.parametrize("owner, forbidden", FORBIDDEN)
def test_lower_layers_never_import_upper_ones(owner, forbidden):
    for module, deps in GRAPH.items():
        if module == owner or module.startswith(owner + "."):
            bad = sorted(d for d in deps for f in forbidden if d == f.rstrip(".")
                         or d.startswith(f if f.endswith(".") else f + ".") or d == f)
            assert not bad, f"{module} imports {bad}"


def test_only_the_cli_and_bench_entry_reach_the_cli():
    assert importers_of("lotts.cli") <= {"lotts.cli", "lotts.__main__"} | {
        m for m in GRAPH if m.startswith("lotts.cli.")}


def system_exits(tree: ast.AST) -> list[int]:
    """Lines raising SystemExit outside an ``if __name__ == "__main__":`` block."""
    allowed = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
               and "__name__" in ast.unparse(block.test) for n in ast.walk(block)}
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Raise)
            and node.exc is not None and "SystemExit" in ast.unparse(node.exc)
            and id(node) not in allowed]


def test_library_code_never_raises_system_exit():
    offenders = {str(p.relative_to(ROOT)): lines for p in (ROOT / "lotts").rglob("*.py")
                 if (lines := system_exits(ast.parse(p.read_text())))}
    assert not offenders


def test_stand_in_verifiers_are_one_registry_for_library_and_cli():
    from lotts.verifiers import available_verifiers, load_verifier
    from lotts.verifiers.statistics import STANDIN_VERIFIERS

    assert set(STANDIN_VERIFIERS) <= set(available_verifiers())
    verifier = load_verifier("stat-sharpness")
    from PIL import Image
    flat, edge = Image.new("RGB", (8, 8), "gray"), Image.new("RGB", (8, 8), "gray")
    edge.paste((255, 255, 255), (4, 0, 8, 8))
    scores = verifier([flat, edge], ["a", "a"])
    assert scores[0] == 0.0 and scores[1] > 0.0


def test_lotts_takes_a_stand_in_verifier_by_name(load_tiny_pipeline):
    from lotts import LoTTS, LoTTSConfig

    pipe = load_tiny_pipeline("sd")
    result = LoTTS(pipe, verifier="stat-sharpness",
                   config=LoTTSConfig(num_seeds=1, num_refinements=1))(
        "a cat", height=64, width=64, num_inference_steps=4)
    assert set(result.scores) == {"stat-sharpness"} and len(result.candidates) == 2


MARKER = re.compile(r"Adapted from diffusers\s*(?:#\s*)?(diffusers\.[\w.]+), (\d+\.\d+\.\d+)")


def replica_markers() -> dict[str, list[tuple[str, str]]]:
    return {str(p.relative_to(ROOT)): MARKER.findall(p.read_text())
            for p in (ROOT / "lotts").rglob("*.py") if MARKER.search(p.read_text())}


def resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def test_every_diffusers_replica_names_what_and_which_version_it_follows():
    markers = replica_markers()
    followed = {name for found in markers.values() for name, _ in found}
    assert {"diffusers.models.attention_processor.AttnProcessor2_0",
            "diffusers.models.transformers.transformer_flux.FluxAttnProcessor",
            "diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl."
            "StableDiffusionXLPipeline._get_add_time_ids",
            "diffusers.pipelines.flux.pipeline_flux.FluxPipeline.__call__"} <= followed
    for name in followed:
        assert callable(resolve(name)), name  # still there in the installed diffusers
