"""Markdown summary of pytest-benchmark JSON from bench_kernels.py: tables, ratios, targets.

    python benchmarks/summary.py b1.json [b2.json ...] [--stages stages.tsv] [--out summary.md]

One table per op: median time, time relative to each baseline of the same run, GB/s (ops 3, 4)
or TFLOP/s (ops 1, 2), peak CUDA memory and max error against the reference; then the issue's
targets, judged for the implementation the automatic dispatch picks, as PASS/MISS with margins.
On a GPU it also measures device-to-device copy bandwidth (torch.clone of 512 MiB) for op 4.
Cases that were skipped or failed are listed from the X.status.jsonl files next to the JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Optional

OPS = {  # op: (baselines in table order, rate column)
    "attention_with_token_maps": (("sdpa", "materialize"), "tflops"),
    "attention_propagate": (("sdpa_dv", "materialize"), "tflops"),
    "quality_mask": (("eager", "compile"), "gbps"),
    "masked_noise_blend": (("eager", "compile", "copy"), "gbps"),
}
IMPL_ORDER = ("cuda", "triton", "ref", "sdpa", "sdpa_dv", "materialize", "eager", "compile", "copy")


def load(paths: list[Path]) -> tuple[list[dict], list[dict], list[str]]:
    """Rows (extra_info + median seconds), case statuses, and notes on unreadable files."""
    rows, statuses, notes = [], [], []
    for path in paths:
        status_path = path.with_suffix(".status.jsonl")
        if status_path.exists():
            statuses += [json.loads(line) for line in status_path.read_text().splitlines() if line]
        try:
            benchmarks = json.loads(path.read_text())["benchmarks"]
        except (OSError, ValueError, KeyError) as error:
            notes.append(f"`{path.name}`: no results ({type(error).__name__}; the stage was "
                         "probably killed before pytest-benchmark wrote its JSON)")
            continue
        rows += [dict(b["extra_info"], median=b["stats"]["median"], rounds=b["stats"]["rounds"],
                      iterations=b["stats"]["iterations"]) for b in benchmarks]
    return rows, statuses, notes


def copy_probe_gbps(size: int = 512 << 20) -> Optional[float]:
    """Device-to-device copy bandwidth (read + write) of torch.clone on the current GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from lotts_kernels.demo import median_ms

    buffer = torch.empty(size, dtype=torch.uint8, device="cuda")
    seconds = median_ms(buffer.clone, budget_s=0.5) / 1e3
    return 2 * size / seconds / 1e9


def fmt_time(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:.3f} ms"


def fmt_opt(value: Optional[float], spec: str, scale: float = 1.0) -> str:
    return "n/a" if value is None else format(value * scale, spec)


def judge(what: str, value: float, bound: float, at_most: bool, unit: str = "x") -> str:
    """'what = value, target <= bound: PASS (...)' with the margin either way."""
    ok = value <= bound if at_most else value >= bound
    factor = (value / bound) if at_most else (bound / value if value else float("inf"))
    word = "headroom" if ok else "over" if at_most else "short"
    margin = f"{abs(factor - 1):.0%} {word}" if factor < 2 else f"{factor:.3g}x {word}"
    sign = "<=" if at_most else ">="
    return (f"{what} = {value:.4g}{unit}, target {sign} {bound:.3g}{unit}: "
            f"**{'PASS' if ok else 'MISS'}** ({margin})")


def auto_pick(by_impl: dict[str, dict]) -> str:
    """The implementation the automatic dispatch chose for most cases of one shape (a lazily
    loaded CUDA extension may join after the first case)."""
    picks = Counter(row["auto_impl"] for row in by_impl.values())
    return max(picks, key=picks.get)


def targets(op: str, by_impl: dict[str, dict], auto: str, probe: Optional[float]) -> list[str]:
    """The issue's targets for the automatically chosen implementation `auto` of one shape."""
    row = by_impl.get(auto)
    if row is None:
        return [f"auto implementation `{auto}` was not timed"]
    t, peak = row["median"], row.get("peak_bytes")
    lines = []
    base = {name: by_impl[name] for name in OPS[op][0] if name in by_impl}
    if op == "attention_with_token_maps":
        if "sdpa" in base:
            sdpa = base["sdpa"]
            lines.append(judge("time / SDPA", t / sdpa["median"], 1.15, True))
            if peak is not None and sdpa.get("peak_bytes"):
                lines.append(judge("peak memory / SDPA's", peak / sdpa["peak_bytes"], 1.10, True))
        if "materialize" in base:
            speedup = base["materialize"]["median"] / t
            lines.append(judge("speed-up over materializing", speedup, 3.0, False))
    elif op == "attention_propagate":
        if "sdpa_dv" in base:
            lines.append(judge("time / SDPA(D-wide v)", t / base["sdpa_dv"]["median"], 1.0, True))
        if peak is not None and row.get("lq_lk_bytes"):
            ratio = peak / row["lq_lk_bytes"]
            lines.append(judge("peak / one 16-bit Lq x Lk matrix", ratio, 1.0, True))
    elif op == "quality_mask" and row["shape"] == "B9 N16384":
        lines.append(judge("time", t * 1e6, 50.0, True, " us"))
    elif op == "masked_noise_blend":
        if probe:
            lines.append(judge("GB/s / copy-probe GB/s", row["gbps"] / probe, 0.8, False))
        if "copy" in base:
            what = "GB/s / same-bytes copy GB/s" + ("" if probe else " (no GPU probe)")
            lines.append(judge(what, row["gbps"] / base["copy"]["gbps"], 0.8, False))
    return [f"`{auto}`: {line}" for line in lines] or [
        f"`{auto}`: no target for this shape, or its baseline was not timed"]


def op_section(op: str, rows: list[dict], probe: Optional[float]) -> list[str]:
    baselines, rate = OPS[op]
    rate_name = "TFLOP/s" if rate == "tflops" else "GB/s"
    header = ["shape", "dtype", "impl", "median"] + [f"time / {b}" for b in baselines] + [
        rate_name, "peak MiB", "max err", "rounds x iters"]
    out = [f"## {op}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    groups: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for row in rows:
        groups[(row["preset"], row["variant"], row["dtype"])][row["impl"]] = row
    for (preset, variant, dtype), by_impl in groups.items():
        auto = auto_pick(by_impl)
        for impl in sorted(by_impl, key=lambda n: IMPL_ORDER.index(n) if n in IMPL_ORDER else 99):
            row = by_impl[impl]
            ratios = [f"{row['median'] / by_impl[b]['median']:.2f}" if b in by_impl else "-"
                      for b in baselines]
            shape = f"{preset}: {row['shape']}"
            label = f"**{impl}**" if impl == auto else impl
            out.append("| " + " | ".join(
                [shape, dtype, label, fmt_time(row["median"])] + ratios + [
                    fmt_opt(row.get(rate), ".4g"),
                    fmt_opt(row.get("peak_bytes"), ".1f", 1 / 2**20),
                    fmt_opt(row.get("max_error"), ".1e"),
                    f"{row['rounds']} x {row['iterations']}"]) + " |")
        notes += [f"- {preset}{' ' + variant if variant else ''} {dtype}, {line}"
                  for line in targets(op, by_impl, auto, probe)]
    return out + ["", "Targets (bold impl: the automatic dispatch's pick):", ""] + notes + [""]


def status_section(statuses: list[dict]) -> list[str]:
    """Cases not timed (skipped or failed), grouped by reason."""
    by_reason: dict[tuple, list[str]] = defaultdict(list)
    for record in statuses:
        if record["outcome"] != "passed":
            by_reason[(record["outcome"], record["reason"])].append(record["case"])
    if not by_reason:
        return []
    out = ["## Not timed", ""]
    for (outcome, reason), cases in sorted(by_reason.items()):
        out.append(f"- **{outcome}** ({len(cases)}): {reason}  \n  cases: {', '.join(cases)}")
    return out + [""]


def stages_section(path: Optional[Path]) -> list[str]:
    if path is None or not path.exists():
        return []
    out = ["## Stages", "", "| stage | status | seconds | limit s |", "|---|---|---|---|"]
    for line in path.read_text().splitlines():
        name, rc, seconds, limit = (line.split("\t") + ["", "", ""])[:4]
        status = {"0": "ok", "124": "TIMEOUT", "137": "KILLED (timeout)", "5": "no tests collected",
                  "skip": "skipped (out of time)"}.get(
            rc, f"FAILED (rc {rc})")
        out.append(f"| {name} | {status} | {seconds} | {limit} |")
    return out + [""]


def summarize(rows: list[dict], statuses: list[dict], notes: list[str], probe: Optional[float],
              stages: Optional[Path]) -> str:
    lines = ["# LoTTS kernel benchmarks", ""]
    if rows:
        c = rows[0]
        lines += [f"device: {c['device']} | scale: {c['scale']} | torch {c['torch']} | triton "
                  f"{c['triton']} | commit {c['commit']}"
                  + (f" | CPU threads {c['threads']}" if c.get("threads") else ""),
                  f"copy probe: {probe:.0f} GB/s (torch.clone, 512 MiB)" if probe else
                  "copy probe: n/a (no GPU); op 4 is compared with a same-bytes copy only", ""]
        if c["scale"] != "gpu":
            lines += [("Reduced CPU shapes: the targets are stated for an H100 at full shapes; "
                       "here they only show how far the path that runs is from them."), ""]
    lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    lines += stages_section(stages)
    by_op = defaultdict(list)
    for row in rows:
        by_op[row["op"]].append(row)
    for op in OPS:
        if by_op[op]:
            lines += op_section(op, by_op[op], probe)
    lines += status_section(statuses)
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="*", type=Path, help="files from --benchmark-json")
    parser.add_argument("--stages", type=Path, help="stages.tsv from run_all.sh")
    parser.add_argument("--out", type=Path, help="markdown file (default: summary.md by the JSON)")
    parser.add_argument("--no-probe", action="store_true", help="skip the GPU copy-bandwidth probe")
    options = parser.parse_args(argv)
    rows, statuses, notes = load(options.json)
    if not options.json:
        notes.append("no benchmark JSON was given (did every benchmark stage fail to start?)")
    probe = None
    if not options.no_probe and any(row["scale"] == "gpu" for row in rows):
        try:
            probe = copy_probe_gbps()
        except Exception as error:  # noqa: BLE001 - the summary must still come out
            notes.append(f"copy probe failed: {error}")
    text = summarize(rows, statuses, notes, probe, options.stages)
    out = options.out or (options.json[0].parent if options.json else Path(".")) / "summary.md"
    out.write_text(text + "\n")
    print(text)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
