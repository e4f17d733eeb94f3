"""pytest setup for the benchmarks (never collected by ``pytest tests``).

* Times with :func:`lotts_kernels.demo.synced_timer` (CUDA-synchronized perf_counter) unless
  ``--benchmark-timer`` names another timer.
* Next to ``--benchmark-json X.json`` appends one line per finished case to ``X.status.jsonl``
  (outcome and skip/failure reason), so summary.py can list what was not timed and why, even
  when a stage is killed before pytest-benchmark writes its JSON.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pytest

SYNCED_TIMER = "lotts_kernels.demo.synced_timer"
_status_file: Optional[Path] = None


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    option = config.option
    if getattr(option, "benchmark_timer", SYNCED_TIMER).endswith(("time.perf_counter",
                                                                 "pep418.perf_counter")):
        option.benchmark_timer = SYNCED_TIMER


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # a skip: (path, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    return crash.message if crash is not None else str(longrepr)[-500:]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call" and report.outcome == "passed":
        return
    if _status_file is None:
        return
    case = report.nodeid.split("[", 1)[-1].rstrip("]")
    record = {"case": case, "when": report.when, "outcome": report.outcome,
              "reason": "" if report.outcome == "passed" else _reason(report)}
    with _status_file.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def pytest_sessionstart(session: pytest.Session) -> None:
    global _status_file
    handle = session.config.getoption("benchmark_json", None)
    if handle is not None:
        _status_file = Path(handle.name).with_suffix(".status.jsonl")
        _status_file.write_text("")
