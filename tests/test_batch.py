"""Batch machinery without a pipeline: prompt files, seeds, config hash, manifest, resume,
leftover shards. The real 2-process run is in test_multiprocess.py."""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from PIL import Image

from lotts.errors import ManifestConflictError, PromptFileError
from lotts.runs.files import TMP_MARK, safe_name
from lotts.runs.manifest import Manifest, RunSpec, read_jsonl
from lotts.runs.prompts import PromptItem, prompt_seed, read_prompts
from lotts.runs.runner import run_batch
from tests.test_report import fake_result, single_thread  # noqa: F401 (autouse)

VOLATILE = ("seconds", "versions", "rank")  # legitimately differ between runs


def stable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


SPEC = RunSpec("lotts", "fake-model", {"num_seeds": 2}, {"num_inference_steps": 4}, "fake", seed=7)
ITEMS = [PromptItem(i, f"prompt {i}") for i in range(5)]


class CountingSampler:
    """Records which prompts it ran; raises at the prompt given as ``fail_at``."""

    def __init__(self, fail_at: str | None = None) -> None:
        self.calls: list[str] = []
        self.fail_at = fail_at

    def __call__(self, prompt: str, seed: int, on_phase) -> object:
        if prompt == self.fail_at:
            raise RuntimeError("killed")
        self.calls.append(prompt)
        on_phase("verify")
        return fake_result(seed, prompt)


# ----- prompt files ---------------------------------------------------------------------------
def test_text_prompts_keep_line_index_ids(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a cat\n\n# a comment\n  a dog  \n")
    assert read_prompts(path) == [PromptItem(0, "a cat"), PromptItem(3, "a dog")]


def test_csv_prompts_with_and_without_id(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('id,Prompt\nx1,"a cat, sitting"\nx2,a dog\n')
    assert read_prompts(path) == [PromptItem("x1", "a cat, sitting"), PromptItem("x2", "a dog")]
    path.write_text("caption,other\na cat,1\na dog,2\n")
    assert read_prompts(path) == [PromptItem(0, "a cat"), PromptItem(1, "a dog")]


def test_jsonl_prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 5, "prompt": "a cat"}\n\n{"prompt": "a dog"}\n"a bird"\n')
    assert read_prompts(path) == [PromptItem(5, "a cat"), PromptItem(2, "a dog"), PromptItem(3, "a bird")]


@pytest.mark.parametrize("name, text, message", [
    ("missing.txt", None, "cannot read prompt file"),
    ("p.csv", "id,words\n1,a cat\n", "no prompt column"),
    ("p.jsonl", '{"prompt": "a"}\n{oops\n', "line 2 is not JSON"),
    ("p.jsonl", '{"prompt": 3}\n', "no string field"),
    ("p.csv", "id,prompt\n1,a\n1,b\n", "duplicate id"),
    ("p.txt", "\n# only comments\n", "holds no prompts"),
    ("p.txt", b"\xff\xfe\x00bad", "cannot read prompt file"),
])
def test_bad_prompt_files_raise_one_clear_error(tmp_path, name, text, message):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    with pytest.raises(PromptFileError, match=message):
        read_prompts(path)


# ----- seeds, hashes, names --------------------------------------------------------------------
def test_seeds_depend_only_on_global_seed_and_prompt_id():
    digest = hashlib.sha256(b"lotts-seed:[0, 0]").digest()
    assert prompt_seed(0, 0) == int.from_bytes(digest[:8], "big") % 2**31 == 967387407  # pinned
    seeds = {prompt_seed(s, i) for s in (0, 1) for i in (0, 1, "0", "a")}
    assert len(seeds) == 8 and all(0 <= s < 2**31 for s in seeds)


def test_config_hash_is_canonical_and_sensitive():
    reordered = RunSpec("lotts", "fake-model", {"num_seeds": 2}, {"num_inference_steps": 4}, "fake", seed=7)
    assert reordered.hash == SPEC.hash
    assert RunSpec(**{**SPEC.__dict__, "seed": 8}).hash != SPEC.hash
    assert RunSpec(**{**SPEC.__dict__, "config": {"num_seeds": 3}}).hash != SPEC.hash
    assert RunSpec(**{**SPEC.__dict__, "report_with": ("x",)}).hash != SPEC.hash


def test_safe_names_never_collide():
    assert safe_name(7) == "00007"
    assert safe_name("ok-id_1.2") == "ok-id_1.2"
    assert safe_name("a/b") != safe_name("a_b") and "/" not in safe_name("a/b")
    assert not safe_name("..").startswith(".")


# ----- manifest -------------------------------------------------------------------------------
def test_manifest_merges_parts_sorted_and_tolerates_a_torn_line(tmp_path):
    manifest = Manifest(tmp_path)
    manifest.append({"id": 3, "x": 1}, rank=1, num_processes=2)
    manifest.append({"id": 1, "x": 1}, rank=0, num_processes=2)
    manifest.append({"id": "b", "x": 1}, rank=0, num_processes=2)
    manifest.append({"id": 1, "x": 2})  # duplicate id in the main manifest wins
    with open(manifest.part_path(1, 2), "a") as handle:
        handle.write('{"id": 9, "x"')  # killed mid-write
    assert [r["id"] for r in manifest.records()] == [1, 3, "b"]
    merged = manifest.merge()
    assert [(r["id"], r["x"]) for r in merged] == [(1, 2), (3, 1), ("b", 1)]
    assert manifest.parts() == [] and read_jsonl(manifest.path) == merged


def test_manifest_of_another_run_is_refused(tmp_path):
    run_batch(CountingSampler(), ITEMS[:1], tmp_path, SPEC, quiet=True)
    other = RunSpec(**{**SPEC.__dict__, "seed": 8})
    with pytest.raises(ManifestConflictError, match="holds another run"):
        run_batch(CountingSampler(), ITEMS, tmp_path, other, quiet=True)


# ----- resume ---------------------------------------------------------------------------------
def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path):
    reference = run_batch(CountingSampler(), ITEMS, tmp_path / "ref", SPEC, quiet=True,
                          save_candidates=True)
    out = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="killed"):
        run_batch(CountingSampler(fail_at="prompt 2"), ITEMS, out, SPEC, quiet=True,
                  save_candidates=True)
    assert [r["id"] for r in Manifest(out).records()] == [0, 1]
    (out / "images" / f"00002{TMP_MARK}999.png").write_bytes(b"half")  # a killed write
    second = CountingSampler()
    resumed = run_batch(second, ITEMS, out, SPEC, quiet=True, save_candidates=True)
    assert second.calls == ["prompt 2", "prompt 3", "prompt 4"], "done prompts are skipped"
    assert stable(resumed) == stable(reference)
    assert not list(out.rglob(f"*{TMP_MARK}*"))
    for record in resumed:
        assert Image.open(out / record["image"]).size == (32, 32)
        assert (out / record["grid"]).is_file()
        assert all((out / f["image"]).is_file() for f in record["candidate_files"])


@dataclass
class ShardState:
    """accelerate's PartialState interface, one rank of a simulated sharded run."""

    process_index: int
    num_processes: int

    @property
    def is_main_process(self) -> bool:
        return self.process_index == 0

    def wait_for_everyone(self) -> None:
        pass

    @contextmanager
    def split_between_processes(self, items):
        yield items[self.process_index::self.num_processes]


def test_leftover_shards_of_a_killed_sharded_run_are_merged_on_resume(tmp_path):
    reference = run_batch(CountingSampler(), ITEMS, tmp_path / "ref", SPEC, quiet=True)
    out = tmp_path / "sharded"
    run_batch(CountingSampler(), ITEMS, out, SPEC, quiet=True, state=ShardState(1, 2))
    part = Manifest(out).part_path(1, 2)
    assert [json.loads(line)["id"] for line in part.read_text().splitlines()] == [1, 3]
    second = CountingSampler()  # the whole job rerun on one process
    resumed = run_batch(second, ITEMS, out, SPEC, quiet=True)
    assert second.calls == ["prompt 0", "prompt 2", "prompt 4"]
    assert stable(resumed) == stable(reference) and not Manifest(out).parts()


def test_record_fields(tmp_path):
    records = run_batch(CountingSampler(), ITEMS[:1], tmp_path, SPEC, quiet=True)
    record = records[0]
    result = fake_result(prompt_seed(7, 0), "prompt 0")
    assert record["seed"] == prompt_seed(7, 0)
    assert record["seeds"] == [c.seed for c in result.candidates]
    assert record["scores"]["fake"] == [c.score for c in result.candidates]
    assert record["selected"] == result.selected and record["nfe"] == result.cost.nfe
    assert record["verifier_calls"] == 6 and record["config_hash"] == SPEC.hash
    assert record["seconds"]["total"] == pytest.approx(0.95)
    assert set(record["versions"]) >= {"lotts", "torch", "diffusers"}
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["config_hash"] == SPEC.hash and run["spec"]["seed"] == 7
