"""``lotts generate --method all --budget-nfe N``: every method sized to one budget, ranked."""
from __future__ import annotations

import pytest

from lotts import LoTTSConfig
from lotts.budget import plan
from lotts.cli import main
from lotts.runs.manifest import read_jsonl
from tests.test_cli import FAST
from tests.test_report import single_thread  # noqa: F401 (autouse fixture)

BUDGET = 40  # 4 steps x 2 CFG rows = 8 NFE per sample


@pytest.fixture(scope="module")
def all_runs(tiny_pipeline_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("all")
    argv = ["generate", "--model", tiny_pipeline_dir("sd"), "--prompt", "a cat on a sofa",
            "--out", out, "--method", "all", "--budget-nfe", BUDGET, "--mask-source", "random",
            "--report-with", "stat-contrast", *FAST]
    assert main([str(a) for a in argv]) == 0
    return out


def test_every_method_spends_what_the_budget_plan_says(all_runs):
    expected = plan(BUDGET, 4, "sd", config=LoTTSConfig(num_seeds=2, num_refinements=1,
                                                       mask_source="random"))
    # random masks cost no localization NFE: 3 seeds x (8 + 1 x 2 x 2) = 36 <= 40
    assert expected["lotts"].size == 3 and expected["best_of_n"].size == 5
    names = {"lotts": "lotts", "best-of-n": "best_of_n", "resampling": "resampling",
             "particles": "particles"}
    for method, key in names.items():
        (record,) = read_jsonl(all_runs / method / "manifest.jsonl")
        assert record["nfe"] == expected[key].nfe <= BUDGET, method
    (particles,) = read_jsonl(all_runs / "particles" / "manifest.jsonl")
    assert len(particles["seeds"]) == 5


def test_the_report_and_ranking_order_methods_by_held_out_score(all_runs):
    text = (all_runs / "ranking.md").read_text()
    assert "stat-contrast (held-out)" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "rank" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["1", "2", "3", "4"]
    scores = [float(row.split("|")[3]) for row in rows]
    assert scores == sorted(scores, reverse=True)
    assert {row.split("|")[2].strip() for row in rows} == {"lotts", "best-of-n", "resampling",
                                                          "particles"}
    assert "id='ranking'" in (all_runs / "report.html").read_text()
