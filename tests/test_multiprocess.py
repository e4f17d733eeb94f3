"""The same ``lotts generate`` command on one process, on two (torchrun, gloo on CPU), and
killed with SIGKILL then rerun: the final manifests are equal."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lotts.cli import main
from lotts.runs.files import TMP_MARK
from lotts.runs.manifest import Manifest, read_jsonl
from tests.test_report import single_thread  # noqa: F401 (autouse: one thread, as the subprocesses)

pytestmark = pytest.mark.skipif(shutil.which("torchrun") is None,
                                reason="torchrun (PyTorch's launcher) is not on PATH")

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red cube", "a blue ball", "a green tree", "a cat on a mat", "a dog in snow", "a boat"]
VOLATILE = ("seconds", "versions", "rank")  # legitimately differ between runs


def stable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


def environment() -> dict[str, str]:
    """One thread per process, so two processes on two cores compute the same bits as one."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def generate_args(model: str, prompts: Path, out: Path) -> list[str]:
    return ["generate", "--model", model, "--prompts", str(prompts), "--out", str(out),
            "--steps", "4", "--height", "32", "--width", "32", "--num-seeds", "2",
            "--num-refinements", "1", "--verifier", "stat-colorfulness",
            "--report-with", "stat-contrast", "--save-candidates", "--quiet"]


def run(command: list[str]) -> None:
    done = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def setting(tiny_pipeline_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("multiprocess")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return tiny_pipeline_dir("sd"), prompts, root


@pytest.fixture(scope="module")
def reference(setting):
    """An uninterrupted single-process run (in this process: one launch less)."""
    model, prompts, root = setting
    assert main(generate_args(model, prompts, root / "single")) == 0
    return read_jsonl(root / "single" / "manifest.jsonl")


def test_two_processes_equal_one(setting, reference):
    model, prompts, root = setting
    out = root / "two"
    run(["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "lotts",
         *generate_args(model, prompts, out)])
    merged = read_jsonl(out / "manifest.jsonl")
    assert [r["id"] for r in merged] == list(range(len(PROMPTS)))
    assert stable(merged) == stable(reference)
    assert {r["rank"] for r in merged} == {0, 1}, "both processes took a share"
    assert not Manifest(out).parts(), "rank parts are merged and removed"
    assert (out / "report.html").is_file()


def test_sigkill_then_rerun_equals_an_uninterrupted_run(setting, reference):
    model, prompts, root = setting
    out = root / "killed"
    command = [sys.executable, "-m", "lotts", *generate_args(model, prompts, out)]
    process = subprocess.Popen(command, env=environment(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not read_jsonl(out / "manifest.jsonl") and process.poll() is None:
        assert time.monotonic() < deadline, "no record appeared"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = read_jsonl(out / "manifest.jsonl")
    assert 1 <= len(finished) < len(PROMPTS), "killed mid-run"
    for record in finished:  # every record's files were complete before it was written
        assert (out / record["image"]).is_file() and (out / record["grid"]).is_file()
    assert main(generate_args(model, prompts, out)) == 0  # the rerun (in process: one launch less)
    assert stable(read_jsonl(out / "manifest.jsonl")) == stable(reference)
    assert not list(out.rglob(f"*{TMP_MARK}*")), "no half-written files left"
