"""Resource table of every GPU kernel, compiled ahead of time for sm_80 and sm_90 without a GPU.

Triton kernels: every op at every backbone shape (and the wide head dims the limits allow), every
dtype (fp32 attention both as launched by default and with TF32 allowed), every autotune
candidate - the ones the pruning keeps and the ones it drops, with its reasons - compiled through
the launchers' own launch descriptions (:mod:`lotts_kernels.aot`). CUDA kernels: csrc/*.cu
compiled by nvcc with the extension's flags and ``-Xptxas -v``.

    python benchmarks/aot_resources.py [--out table.md] [--quick]

Writes markdown (registers, spill stores/loads, stack, shared memory per kernel, dtype, config,
target) and exits 1 when a config the pruning keeps spills or exceeds shared memory, or its
shared-memory estimate is below what Triton allocated. A full run compiles a few
hundred kernels (an hour on two busy cores; cached afterwards). IEEE fp32 attention, refused on
every config, is compiled in its smallest tile only (10-110 s each); ``--quick`` skips every
config the pruning drops.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the launchers' (Triton 3.9) default

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lotts_kernels import aot  # noqa: E402

HEADER = ("| kernel | case | dtype | config | target | kept | regs | spill st/ld (B) | stack (B) "
          "| shared (B) | estimate (B) | note |")


def _config_text(config) -> str:
    if config is None:
        return "-"
    kw = config.kwargs
    return f"{kw['BLOCK_M']}x{kw['BLOCK_N']} w{config.num_warps} s{config.num_stages}"


_CASES: list = []


_DTYPES: list = list(aot.DTYPE_NAMES)


def _cases() -> list:
    if not _CASES:
        _CASES.extend(c for c in aot.full_matrix() if c.dtype in _DTYPES)
    return _CASES


def _jobs(quick: bool) -> list[tuple[int, int, int]]:
    """(case, config, capability) indices to compile. Where every candidate is refused for IEEE
    fp32 (it spills everywhere), only the smallest tile is compiled, as the evidence."""
    jobs = []
    for index, case in enumerate(_cases()):
        for capability in aot.TARGET_CAPABILITIES:
            rows = case.configs(capability, include_pruned=True)
            chosen = [i for i, (_, problems, _) in enumerate(rows) if not (quick and problems)]
            if rows[0][0] is not None and case.launch.kwargs.get("DOT_PRECISION") == "ieee":
                chosen = [min(chosen, key=lambda i: rows[i][0].kwargs["BLOCK_M"]
                              * rows[i][0].kwargs["BLOCK_N"])] if not quick else []
            jobs += [(index, i, capability) for i in chosen]
    return jobs


def _compile_job(job: tuple[int, int, int]):
    index, config_index, capability = job
    case = _cases()[index]
    config, problems, estimate = case.configs(capability, include_pruned=True)[config_index]
    launch = case.launch if config is None else case.launch.with_config(config)
    started = time.time()
    try:
        return job, aot.compile_launch(launch, capability), None, time.time() - started
    except Exception as error:  # noqa: BLE001 - a compile error is a table row
        return job, None, str(error), time.time() - started


def triton_rows(quick: bool, failures: list[str], workers: int, progress=None) -> list[str]:
    import multiprocessing

    rows = []
    jobs = _jobs(quick)
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for job, res, error, seconds in pool.imap(_compile_job, jobs):
            index, config_index, capability = job
            case = _cases()[index]
            config, problems, estimate = case.configs(capability, include_pruned=True)[
                config_index]
            label = f"{case.kernel} {case.name} {case.dtype} {_config_text(config)} sm_{capability}"
            kept = "yes" if not problems else "no"
            cells = f"| {case.kernel} | {case.name} | {case.dtype} | {_config_text(config)} | " \
                    f"sm_{capability} | {kept} |"
            if res is None:
                failures.append(f"{label}: compile error {error}")
                rows.append(f"{cells} compile error | | | | | {error.splitlines()[0][:80]} |")
                continue
            measured = res.problems()
            if not problems and measured:
                failures.append(f"{label} is kept but {'; '.join(measured)}")
            if not problems and estimate is not None and estimate < res.total_shared:
                failures.append(f"{label}: estimate {estimate} B < {res.total_shared} B")
            rows.append(f"{cells} {res.registers} | {res.spill_stores}/{res.spill_loads} | "
                        f"{res.stack} | {res.total_shared} | "
                        f"{estimate if estimate is not None else '-'} | {'; '.join(problems)} |")
            if progress is not None:
                progress.write(rows[-1] + "\n")
                progress.flush()
            print(f"{label}: {res.registers} regs, {res.spill_stores} B spills, "
                  f"{res.total_shared} B shared ({seconds:.1f} s)", file=sys.stderr, flush=True)
    return rows


def cuda_rows(failures: list[str]) -> list[str]:
    from lotts_kernels import cuda_build

    rows = ["| kernel | target | regs | spill st/ld (B) | stack (B) | static shared (B) |",
            "|---|---|---|---|---|---|"]
    for source in cuda_build.source_files():
        if source.suffix != ".cu":
            continue
        for capability in aot.TARGET_CAPABILITIES:
            for res in aot.compile_cuda_source(source, capability):
                if res.problems():
                    failures.append(f"{res.kernel} sm_{capability}: {'; '.join(res.problems())}")
                rows.append(f"| `{res.kernel}` | sm_{capability} | {res.registers} | "
                            f"{res.spill_stores}/{res.spill_loads} | {res.stack} | "
                            f"{res.static_shared} |")
    return rows


def versions() -> str:
    import torch
    import triton

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    nvcc = aot.find_nvcc()
    nvcc_version = (subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False)
                    .stdout.strip().splitlines()[-1] if nvcc else "none")
    return (f"{datetime.date.today().isoformat()}, commit {commit}, triton {triton.__version__} "
            f"(bundled ptxas: {aot.ptxas_versions()}), nvcc {nvcc_version}, torch "
            f"{torch.__version__}, Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the markdown here (default: stdout)")
    parser.add_argument("--quick", action="store_true",
                        help="only the configs the pruning keeps")
    parser.add_argument("--no-cuda", action="store_true", help="skip the csrc/*.cu table")
    parser.add_argument("--workers", type=int, default=2, help="parallel compiles")
    parser.add_argument("--dtypes", default=",".join(aot.DTYPE_NAMES),
                        help=f"comma-separated subset of {', '.join(aot.DTYPE_NAMES)}")
    args = parser.parse_args(argv)
    _DTYPES[:] = args.dtypes.split(",")
    failures: list[str] = []
    lines = [f"AOT resources ({versions()}).", "", HEADER,
             "|" + "---|" * (HEADER.count("|") - 1)]
    progress = args.out.with_suffix(".partial").open("w") if args.out else None
    lines += triton_rows(args.quick, failures, args.workers, progress)
    if not args.no_cuda:
        lines += ["", "CUDA extension (nvcc -Xptxas -v, the extension's flags):", ""]
        lines += cuda_rows(failures)
    if failures:
        lines += ["", "FAILURES:", *[f"- {f}" for f in failures]]
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
