"""The ``lotts`` command line: options, clear errors (exit 2), generate/demo/bench/compare/env
end to end on tiny offline pipelines, and the embedded published configs."""
from __future__ import annotations

import dataclasses
import importlib.util
import re
import runpy
import sys
from pathlib import Path

import pytest

from lotts import LoTTSConfig
from lotts.cli import build_parser, main
from lotts.cli.options import config_from_args
from lotts.runs.manifest import read_jsonl
from lotts.runs.prompts import prompt_seed
from tests.test_report import single_thread  # noqa: F401 (autouse fixture)

FAST = ["--steps", "4", "--height", "32", "--width", "32", "--num-seeds", "2",
        "--num-refinements", "1", "--verifier", "stat-colorfulness", "--quiet"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr; stderr without logging's own "--- Logging error ---"
    reports (a library logger still bound to an earlier test's closed capture stream)."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    err = re.sub(r"--- Logging error ---.*?\nArguments: \(.*?\)\n", "", captured.err, flags=re.S)
    return code, captured.out, err


# ----- options --------------------------------------------------------------------------------
def test_every_config_field_is_an_option_with_the_dataclass_default():
    parser = build_parser()
    args = parser.parse_args(["generate", "--model", "m", "--prompt", "p", "--out", "o"])
    assert config_from_args(args) == LoTTSConfig()
    generate = parser._subparsers._group_actions[0].choices["generate"]
    options = {o for action in generate._actions for o in action.option_strings}
    for item in dataclasses.fields(LoTTSConfig):
        assert f"--{item.name.replace('_', '-')}" in options
    help_text = generate.format_help()
    assert "originals per prompt" in help_text, "help comes from the dataclass docstring"


def test_config_options_parse_their_types():
    args = build_parser().parse_args([
        "generate", "--model", "m", "--prompt", "p", "--out", "o", "--num-seeds", "4",
        "--t0", "0.3", "--global-steps", "none", "--mask-ratio", "0.25",
        "--quality-prompts", "A good {}.", "A bad {}.", "--search", "chain"])
    config = config_from_args(args)
    assert config == LoTTSConfig(num_seeds=4, t0=0.3, mask_ratio=0.25, search="chain",
                                 quality_prompts=("A good {}.", "A bad {}."))
    args = build_parser().parse_args(["generate", "--model", "m", "--prompt", "p", "--out", "o",
                                      "--t0", "12"])
    assert config_from_args(args).t0 == 12 and isinstance(config_from_args(args).t0, int)


# ----- errors: one message, exit code 2 --------------------------------------------------------
@pytest.mark.parametrize("extra, message", [
    (["--model", "/nonexistent/model"], "--allow-download"),
    (["--model", "nobody/no-such-model"], "pass a local path"),
    (["--prompts", "/nonexistent/prompts.txt"], "cannot read prompt file"),
    (["--mask-ratio", "1.5"], "mask_ratio"),
    (["--num-seeds", "0"], "num_seeds"),
    (["--verifier", "pickscore"], "cannot load verifier 'pickscore'"),
    (["--verifier", "no-such-verifier"], "unknown verifier"),
])
def test_user_errors_exit_2_with_one_message(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    monkeypatch.delenv("LOTTS_PICKSCORE_PATH", raising=False)
    argv = ["generate", "--out", tmp_path / "out", "--model", "/nonexistent/model",
            "--verifier", "stat-colorfulness", "--quiet"]
    prompt = [] if "--prompts" in extra else ["--prompt", "a cat"]
    code, _, err = run_cli(capsys, *argv, *prompt, *extra)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert err.startswith("lotts generate: error:")


@pytest.mark.parametrize("extra, message", [
    (["--t0", "10"], "beyond the schedule"),
    (["--pipe-arg", "no_such_argument=1"], "does not support the pipeline arguments"),
])
def test_settings_the_pipeline_cannot_run_exit_2_before_any_prompt(tiny_pipeline_dir, tmp_path,
                                                                    capsys, extra, message):
    code, _, err = run_cli(capsys, "generate", "--model", tiny_pipeline_dir("sd"), "--prompt", "a cat",
                           "--out", tmp_path / "out", *FAST, *extra)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="cannot load model"):
        main(["generate", "--model", str(tmp_path / "none"), "--prompt", "a", "--out",
              str(tmp_path / "o"), "--verifier", "stat-colorfulness", "--debug"])


def test_bad_option_values_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--model", "m", "--prompt", "p", "--out", "o", "--num-seeds", "x"])
    assert exit_info.value.code == 2
    assert "--num-seeds" in capsys.readouterr().err


# ----- generate end to end ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def both_runs(tiny_pipeline_dir, tmp_path_factory):
    """LoTTS and Best-of-N on two prompts of a CSV file, candidates saved."""
    out = tmp_path_factory.mktemp("both")
    prompts = out.parent / "prompts.csv"
    prompts.write_text("id,prompt\ncat,a cat on a sofa\ndog,a dog in the snow\n")
    argv = ["generate", "--model", tiny_pipeline_dir("sd"), "--prompts", prompts, "--out", out,
            "--method", "both", "--save-candidates", "--report-with", "stat-contrast,stat-sharpness",
            *FAST]
    assert main([str(a) for a in argv]) == 0
    return out, argv


def test_generate_writes_images_manifests_report_and_compare(both_runs):
    out, _ = both_runs
    lotts = read_jsonl(out / "lotts" / "manifest.jsonl")
    best = read_jsonl(out / "best-of-n" / "manifest.jsonl")
    assert [r["id"] for r in lotts] == [r["id"] for r in best] == ["cat", "dog"]
    for record in lotts:
        seed = prompt_seed(0, record["id"])
        assert record["seeds"][:2] == [seed, seed + 1] and record["parents"] == [None, None, 0, 1]
        assert set(record["scores"]) == {"stat-colorfulness", "stat-contrast", "stat-sharpness"}
        assert all(len(v) == 4 for v in record["scores"].values())
        assert record["nfe"] == LoTTSConfig(num_seeds=2, num_refinements=1).lotts_nfe(4, "sd")
        assert (out / "lotts" / record["grid"]).is_file()
    for record in best:
        assert record["seeds"] == [prompt_seed(0, record["id"]) + j for j in range(4)]
        assert record["nfe"] == 4 * 4 * 2  # N = 4 matches LoTTS's 30 NFE, guided steps
    html = (out / "report.html").read_text()
    assert "a dog in the snow" in html and "best-of-n / lotts" in html
    assert "| total NFE |" in (out / "compare.md").read_text()


def test_rerunning_the_same_command_skips_finished_prompts(both_runs, capsys):
    out, argv = both_runs
    before = (out / "lotts" / "manifest.jsonl").read_text()
    assert main([str(a) for a in argv]) == 0
    assert (out / "lotts" / "manifest.jsonl").read_text() == before  # nothing was redone


def test_an_out_dir_of_another_run_exits_2(both_runs, capsys):
    out, argv = both_runs
    changed = [str(a) for a in argv] + ["--seed", "1"]
    code, _, err = run_cli(capsys, *changed)
    assert code == 2 and "holds another run" in err and "Traceback" not in err


def test_compare_command_prints_and_writes(both_runs, capsys, tmp_path):
    out, _ = both_runs
    code, text, _ = run_cli(capsys, "compare", out / "lotts", out / "best-of-n", "--out",
                            tmp_path / "c.md")
    assert code == 0 and "| total NFE |" in text
    assert (tmp_path / "c.md").read_text() == text
    code, _, err = run_cli(capsys, "compare", out / "lotts", tmp_path)
    assert code == 2 and "not a lotts run directory" in err


# ----- demo, bench, env --------------------------------------------------------------------------
def test_demo_runs_end_to_end_offline(tmp_path, capsys):
    code, _, _ = run_cli(capsys, "demo", "--out", tmp_path, "--num-prompts", "1", "--steps", "4",
                         "--quiet")
    assert code == 0
    html = (tmp_path / "report.html").read_text()
    assert "miniature world" in html and "a red circle above a blue square" in html
    record = read_jsonl(tmp_path / "lotts" / "manifest.jsonl")[0]
    assert len(record["seeds"]) == 9 and record["grid"]
    assert set(record["scores"]) == {"world-clean-a", "world-clean-b"}
    matched = LoTTSConfig().matched_best_of_n(4, "sd")  # Best-of-N at LoTTS's NFE: 7, not 9
    assert len(read_jsonl(tmp_path / "best-of-n" / "manifest.jsonl")[0]["seeds"]) == matched == 7


def test_demo_without_the_world_assets_is_a_clear_usage_error(tmp_path, capsys, monkeypatch):
    import lotts.world.evaluate
    monkeypatch.setattr(lotts.world.evaluate, "PIPELINE_DIR", tmp_path / "missing")
    code, _, err = run_cli(capsys, "demo", "--out", tmp_path / "o", "--quiet")
    assert code == 2 and "cannot load the miniature world" in err
    assert not (tmp_path / "o").exists()


def test_bench_on_cpu_reports_nfe_and_time_ratios(tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    code, text, _ = run_cli(capsys, "bench", "--device", "cpu", "--backbones", "sd21", "--steps", "4",
                            "--results", results, "--quiet")
    assert code == 0
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| sd21")]
    assert [(r[1].strip(), r[2].strip()) for r in rows] == [("lotts", "9"), ("best-of-n", "9"),
                                                           ("best-of-n", "25")]
    lotts_nfe = LoTTSConfig(num_seeds=3, num_refinements=2, t0=2).lotts_nfe(4, "sd")
    assert [int(r[3]) for r in rows] == [lotts_nfe, 9 * 4 * 2, 25 * 4 * 2]
    assert rows[2][5].strip() == f"{25 * 8 / lotts_nfe:.2f}x"
    assert "Device: CPU" in results.read_text() and "commit" in results.read_text()


def test_bench_keeps_to_its_time_budget(tmp_path, capsys):
    from lotts import bench

    results = tmp_path / "RESULTS.md"
    results.write_text("# earlier results\n")
    code, text, _ = run_cli(capsys, "bench", "--device", "cpu", "--budget-s", "0", "--results",
                            results, "--quiet")
    assert code == 0 and "skipped, out of time budget: sd21, sdxl, flux" in text
    assert results.read_text().startswith("# earlier results\n")
    nine = bench.Measurement("sd21", "best-of-n", 9, 900, 9.0, 9)
    row = bench.matched_best_of_n(bench.BACKBONES["sd21"], nine, 0.0, None)
    assert row.extrapolated and (row.n, row.nfe, row.seconds) == (25, 2500, 25.0)
    assert "25 (extrapolated)" in bench.table([bench.Measurement("sd21", "lotts", 9, 618, 6.0, 9),
                                               nine, row])


def test_bench_rejects_unknown_backbones(capsys):
    code, _, err = run_cli(capsys, "bench", "--device", "cpu", "--backbones", "sd3")
    assert code == 2 and "unknown backbone" in err


def test_env_and_python_dash_m(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lotts", "env"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("lotts", run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "torch" in out and "masked_noise_blend" in out and "diffusers" in out


def test_gpu_entry_explains_a_missing_diffusers(monkeypatch, capsys):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cost.py"
    spec = importlib.util.spec_from_file_location("bench_cost", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module.importlib.util, "find_spec", lambda name: None)
    assert module.main([]) == 2
    assert "diffusers is not installed" in capsys.readouterr().err


# ----- published configs ----------------------------------------------------------------------
@pytest.mark.parametrize("backbone, denoiser", [("sd21", "unet"), ("sdxl", "unet"), ("flux", "transformer")])
def test_embedded_configs_match_published_parameter_counts(backbone, denoiser):
    from accelerate import init_empty_weights

    from lotts import model_configs

    class_name, config = model_configs.BACKBONE_COMPONENTS[backbone][denoiser]
    with init_empty_weights():  # meta tensors: no memory, no time
        model = model_configs.build_component(class_name, config)
    count = sum(p.numel() for p in model.parameters())
    assert count == model_configs.PUBLISHED_DENOISER_PARAMS[backbone]


def test_bench_sd21_base_steps_the_base_models_own_epsilon_schedule():
    """SD2.1-base predicts epsilon; the 768 px SD2.1's v-prediction scheduler is another model's."""
    import torch

    from lotts import bench

    pipe = bench.build_pipeline(bench.BACKBONES["sd21"], "tiny", "cpu", torch.float32)
    config = pipe.scheduler.config
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert config.prediction_type == "epsilon" and config.steps_offset == 1
    assert (config.beta_start, config.beta_end, config.beta_schedule) == (0.00085, 0.012,
                                                                         "scaled_linear")
