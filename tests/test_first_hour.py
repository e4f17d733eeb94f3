"""Issue 12: what a new user hits in the first hour. The command-line items run the real
``lotts`` entry point in a subprocess (as a user would, independent of the package layout)
on the shipped miniature-world pipeline; the Python-API items call the public API."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
WORLD = ROOT / "lotts" / "world" / "assets" / "pipeline"
# The cheapest real run: the world pipeline at 4 steps, one original and one refinement.
TINY = ["--model", str(WORLD), "--verifier", "world-clean-a", "--steps", "4",
        "--num-seeds", "1", "--num-refinements", "1"]
LOADING_LINE = "loading"  # what a command prints (unless --quiet) before it loads a model


def lotts(*argv: object, cwd: Path | None = None, timeout: float = 300
          ) -> subprocess.CompletedProcess:
    """Run the installed ``lotts`` console script (``python -m lotts`` where it is not on
    PATH) on this checkout, offline and single-threaded."""
    env = {k: v for k, v in os.environ.items()  # no user weights: a fresh machine
           if not (k.startswith("LOTTS_") and k.endswith("_PATH")) and k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    script = shutil.which("lotts")
    command = [script] if script else [sys.executable, "-m", "lotts"]
    return subprocess.run([*command, *map(str, argv)], check=False, cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess, command: str) -> str:
    """The single error line of a refused command (exit 2, no traceback)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"lotts {command}: error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    return proc.stderr[proc.stderr.index(errors[0]):]


@pytest.fixture(scope="module")
def generate_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("generate") / "run"
    proc = lotts("generate", *TINY, "--prompt", "a red circle", "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo"
    proc = lotts("demo", "--out", out, "--num-prompts", "1", "--steps", "4", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def copy_run(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / run.name
    shutil.copytree(run, target)
    return target


# ----- item 1: runs never overwrite each other -------------------------------------------------
def test_demo_refuses_the_directory_of_a_generate_run(generate_run, tmp_path):
    out = copy_run(generate_run, tmp_path)
    report = (out / "report.html").read_bytes()
    proc = lotts("demo", "--out", out, "--num-prompts", "1", "--steps", "4")
    assert "another run" in one_line_error(proc, "demo")
    assert LOADING_LINE not in proc.stderr.lower(), "refused only after loading the model"
    assert (out / "report.html").read_bytes() == report
    assert not (out / "lotts").exists() and not (out / "best-of-n").exists()


def test_generate_refuses_the_directory_of_a_demo(demo_run, tmp_path):
    out = copy_run(demo_run, tmp_path)
    report = (out / "report.html").read_bytes()
    # A model that cannot load: the refusal must come before any loading is tried.
    proc = lotts("generate", "--model", tmp_path / "no-such-model", "--verifier", "world-clean-a",
                 "--prompt", "a red circle", "--out", out, "--method", "lotts")
    message = one_line_error(proc, "generate")
    assert "another run" in message and "cannot load model" not in message
    assert (out / "report.html").read_bytes() == report
    assert not (out / "run.json").exists()


def test_compare_prints_and_writes_only_where_told(demo_run, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = lotts("compare", demo_run / "lotts", demo_run / "best-of-n", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| metric |" in proc.stdout
    assert list(cwd.iterdir()) == [], "compare wrote a file nobody asked for"
    proc = lotts("compare", demo_run / "lotts", demo_run / "best-of-n", "--out", tmp_path / "c.md")
    assert proc.returncode == 0 and (tmp_path / "c.md").read_text() == proc.stdout


# ----- item 2: the shipped pipeline loads the standard way -------------------------------------
def test_world_pipeline_loads_with_plain_from_pretrained_and_runs_on_cpu():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(WORLD), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.float32}
    image = pipe("a red circle", num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


def test_world_readme_shows_the_standard_loading_line_and_it_runs(monkeypatch):
    text = (ROOT / "lotts" / "world" / "README.md").read_text()
    assert 'StableDiffusionPipeline.from_pretrained("lotts/world/assets/pipeline", ' \
           'local_files_only=True)' in text
    snippet = text.split("```python\n")[1].split("```")[0]
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    exec(compile(snippet, "lotts/world/README.md", "exec"), namespace)  # noqa: S102 (as written)
    assert namespace["image"].size == (64, 64)


def test_lotts_world_loading_emits_no_dtype_deprecation():
    from lotts.world.evaluate import load_pipeline

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = load_pipeline()
    assert not [w for w in caught if "dtype" in str(w.message)], [str(w.message) for w in caught]
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.float32}


# ----- item 3: one-line errors up front --------------------------------------------------------
def _unwritable_dir(tmp_path: Path) -> Path:
    """A directory this process cannot create files in (root ignores permission bits, so it
    gets a place in sysfs, which refuses everyone)."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        return locked / "out"
    if not Path("/sys").is_dir():
        pytest.skip("needs a directory root cannot write to")
    return Path("/sys/lotts-first-hour-test/out")


@pytest.mark.parametrize("kind", ["file", "under-a-file", "unwritable"])
def test_an_unusable_out_is_refused_before_loading(tmp_path, kind):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    out = {"file": a_file, "under-a-file": a_file / "run",
           "unwritable": _unwritable_dir(tmp_path) if kind == "unwritable" else None}[kind]
    proc = lotts("generate", "--model", tmp_path / "no-such-model", "--verifier", "world-clean-a",
                 "--prompt", "a red circle", "--out", out)
    message = one_line_error(proc, "generate")
    assert "--out" in message and "cannot load model" not in message


def test_a_size_the_pipeline_refuses_is_one_line_before_any_prompt(tmp_path):
    proc = lotts("generate", *TINY, "--prompt", "a red circle", "--out", tmp_path / "o",
                 "--height", "30", "--quiet")
    message = one_line_error(proc, "generate")
    assert "height" in message and "30" in message and "8" in message
    assert not (tmp_path / "o" / "images").exists()


@pytest.fixture(scope="module")
def world_runner():
    from lotts import LoTTS, LoTTSConfig
    from lotts.world.evaluate import load_pipeline

    return LoTTS(load_pipeline(), verifier="world-clean-a",
                 config=LoTTSConfig(num_seeds=1, num_refinements=1))


@pytest.fixture(scope="module")
def world_image(world_runner) -> Image.Image:
    return world_runner("a red circle", seed=0, num_inference_steps=4).image


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_refine_takes_grayscale_rgba_and_palette_images(world_runner, world_image, mode):
    odd = world_image.convert(mode)
    got = world_runner.refine(odd, "a red circle", seed=1, num_inference_steps=4)
    want = world_runner.refine(odd.convert("RGB"), "a red circle", seed=1, num_inference_steps=4)
    assert got.image.mode == "RGB"
    assert np.array_equal(np.asarray(got.image), np.asarray(want.image))


def test_refine_of_another_size_resizes_to_the_requested_size(world_runner, world_image):
    from lotts import LoTTS

    doc = " ".join(LoTTS.refine.__doc__.split())
    assert "resized" in doc and "height" in doc and "width" in doc
    small = world_image.resize((32, 32), Image.BICUBIC)
    kept = world_runner.refine(small, "a red circle", seed=1, num_inference_steps=4)
    assert kept.image.size == (32, 32)  # no size asked for: the image's own
    asked = world_runner.refine(small, "a red circle", seed=1, num_inference_steps=4,
                                height=64, width=64)
    assert asked.image.size == (64, 64)
    same = world_runner.refine(small.resize((64, 64), Image.BICUBIC), "a red circle", seed=1,
                               num_inference_steps=4, height=64, width=64)
    assert np.array_equal(np.asarray(asked.image), np.asarray(same.image))


# ----- item 4: the demo compares at matched NFE and says who won --------------------------------
def test_demo_sizes_best_of_n_by_matched_nfe_and_names_the_winner(demo_run):
    import json

    from lotts import LoTTSConfig
    from lotts.runs.manifest import read_jsonl

    spec = json.loads((demo_run / "best-of-n" / "run.json").read_text())["spec"]
    assert spec["config"]["n"] == "matched"  # the identity records how N was asked for
    matched = LoTTSConfig().matched_best_of_n(4, "sd")
    (record,) = read_jsonl(demo_run / "best-of-n" / "manifest.jsonl")
    assert len(record["seeds"]) == matched == 7
    summary = (demo_run / "report.html").read_text().split("<h2>Prompts</h2>")[0]
    assert "matched" in summary and f"Best-of-{matched}" in summary
    assert re.search(r"(LoTTS|Best-of-N|best-of-n|lotts|tie)[^<]*held-out verifier world-clean-b",
                     summary) or re.search(r"held-out verifier world-clean-b[^<]*(wins|tie)", summary)


# ----- item 5: the verifier option says what exists and how to fix a missing one ----------------
def test_generate_help_lists_the_builtin_verifiers_and_the_default():
    from lotts.verifiers import available_verifiers

    proc = lotts("generate", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for name in [*available_verifiers(), "world-clean-a", "world-clean-b"]:
        assert name in text, name
    assert re.search(r"default: ?image-reward", text)


def test_missing_verifier_weights_name_the_command_line_fix(tmp_path):
    proc = lotts("generate", "--model", tmp_path / "m", "--prompt", "a cat", "--out", tmp_path / "o",
                 "--verifier", "image-reward")
    message = one_line_error(proc, "generate")
    assert "--verifier PATH" in message and "--allow-download" in message
    assert "allow_download=True" not in message and "path=" not in message


# ----- item 6: quiet means quiet, one bar, warnings once -----------------------------------------
def test_quiet_prints_nothing(tmp_path):
    proc = lotts("generate", *TINY, "--prompt", "a red circle", "--out", tmp_path / "o", "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == "" and proc.stdout == ""


def test_a_run_shows_one_bar_and_each_warning_once(tmp_path):
    long_prompt = "a red circle above a blue square " * 12
    proc = lotts("generate", *TINY, "--prompt", long_prompt, "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torchvision" not in proc.stderr
    frames = [f.strip() for f in re.split(r"[\r\n]", proc.stderr) if "%|" in f]
    assert frames and all(f.startswith("prompts") for f in frames), set(frames)
    truncation = [line for line in proc.stderr.splitlines() if "truncat" in line.lower()]
    assert len(truncation) == 1 and len(truncation[0]) < 200, truncation


# ----- item 7: small surprises --------------------------------------------------------------------
def _result_repr_case():
    from lotts.result import Candidate, Cost, LoTTSResult

    image = Image.new("RGB", (64, 64))
    candidates = [Candidate(seed=i, parent=None if i < 3 else i % 3, image=image,
                            latents=torch.randn(1, 4, 64, 64),
                            mask=None if i < 3 else torch.rand(64, 64) > 0.5,
                            heatmap=None if i < 3 else torch.rand(64, 64), score=0.1 * i, nfe=50)
                  for i in range(9)]
    return LoTTSResult("a kitten playing with yarn " * 10, candidates, 4, Cost(nfe=249))


def test_print_result_is_short_and_says_what_matters():
    result = _result_repr_case()
    text = repr(result)
    assert len(text) < 400, len(text)
    for part in ("lotts", "9 candidates", "selected=4", "nfe=249", "0.400"):
        assert part in text, (part, text)
    assert len(repr(result.candidates[5])) < 200
    assert str(result) == text


def test_step_counts_too_short_for_t0_and_global_steps_are_refused_with_the_minimum():
    from lotts import LoTTSConfig

    with pytest.raises(ValueError, match=r"at least 4"):
        LoTTSConfig().resolved("sd", 1)
    with pytest.raises(ValueError, match=r"at least 4"):
        LoTTSConfig().resolved("sd", 3)
    assert LoTTSConfig().resolved("sd", 4).masked_stop > LoTTSConfig().resolved("sd", 4).t0
    with pytest.raises(ValueError, match=r"at least 13"):
        LoTTSConfig(t0=10, global_steps=2).resolved("sd", 12)
    assert LoTTSConfig(num_refinements=0).resolved("sd", 1).num_steps == 1  # nothing to refine


def test_steps_1_on_the_command_line_is_one_line_with_the_minimum(tmp_path):
    proc = lotts("generate", *TINY, "--prompt", "a red circle", "--out", tmp_path / "o",
                 "--steps", "1", "--quiet")
    assert "at least 4" in one_line_error(proc, "generate")


def test_compare_matches_a_text_run_and_a_csv_run_of_the_same_prompts(tmp_path):
    (tmp_path / "p.txt").write_text("a red circle\n")
    (tmp_path / "p.csv").write_text("id,prompt\n0,a red circle\n")
    for name in ("p.txt", "p.csv"):
        proc = lotts("generate", *TINY, "--prompts", tmp_path / name, "--out", tmp_path / name[2:],
                     "--quiet")
        assert proc.returncode == 0, proc.stderr[-2000:]
    proc = lotts("compare", tmp_path / "txt", tmp_path / "csv")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 prompts in common" in proc.stdout


def test_readme_names_the_fields_and_the_prompt_columns():
    from lotts.runs.prompts import PROMPT_COLUMNS

    text = (ROOT / "README.md").read_text()
    method = text.split("## Method")[1].split("\n## ")[0]
    for field in ("num_refinements", "mask_ratio", "num_seeds", "global_steps", "lam"):
        assert f"`{field}" in method, field
    assert not re.search(r"`(k|r)`", method), "Method section uses k / r, not the field names"
    command_line = text.split("## Command line")[1].split("\n## ")[0]
    for column in PROMPT_COLUMNS:
        assert f"`{column}`" in command_line, column


def test_top_level_help_has_no_rst_markup():
    proc = lotts("--help")
    assert proc.returncode == 0 and "``" not in proc.stdout and "lotts" in proc.stdout


def test_generate_help_lists_token_selection_and_search_choices():
    text = " ".join(lotts("generate", "--help").stdout.split())
    assert "--token-selection {content,quality,all}" in text
    assert "--search {siblings,chain}" in text


def test_env_prints_each_version_once():
    proc = lotts("env")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("torch", "diffusers", "transformers"):
        lines = [line for line in proc.stdout.splitlines()  # "torch 2.13.0", not "torch CUDA"
                 if re.match(rf"{name}\s+\d", line)]
        assert len(lines) == 1, (name, lines)
