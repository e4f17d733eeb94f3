"""Check and time each LoTTS op at a small realistic shape: ``python -m lotts_kernels.demo``.

Every op goes through the public API (so the automatic dispatch picks the implementation), is
compared with the PyTorch reference on the same inputs, and is timed against the naive path a
user would otherwise write: the materialized attention matrix for ops 1 and 2, the eager
reference for ops 3 and 4. The timing helpers and materializing baselines here are shared with
``benchmarks/bench_kernels.py``.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time
from typing import Any, Callable, Optional

import torch

import lotts_kernels
from lotts_kernels import dispatch, triton_utils
from lotts_kernels.ops.attention import default_scale
from lotts_kernels.ops.masked_noise_blend import masked_noise_blend_ref
from lotts_kernels.ops.quality_mask import quality_mask_ref


# ----- timing ---------------------------------------------------------------------------------

def synced_timer() -> float:
    """time.perf_counter() after queued CUDA work finishes (also a pytest-benchmark timer)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def plan_rounds(fn: Callable[[], Any], budget_s: float, max_rounds: int = 50,
                warm: bool = True) -> tuple[int, int]:
    """(rounds, iterations per round) so that timing `fn` takes about `budget_s`.

    A round lasts at least ~1 ms so the synchronizing timer's own cost stays small; at least 3
    rounds so a median exists. Calls `fn` once, after a warm-up call if `warm`.
    """
    if warm:
        fn()
    start = synced_timer()
    fn()
    once = max(synced_timer() - start, 1e-7)
    iterations = max(1, min(1000, int(1e-3 / once)))
    rounds = max(3, min(max_rounds, int(budget_s / (once * iterations))))
    return rounds, iterations


def median_ms(fn: Callable[[], Any], budget_s: float = 0.3) -> float:
    """Median wall time of one call of `fn` in milliseconds, CUDA-synchronized."""
    rounds, iterations = plan_rounds(fn, budget_s)
    times = []
    for _ in range(rounds):
        start = synced_timer()
        for _ in range(iterations):
            fn()
        times.append((synced_timer() - start) / iterations)
    return 1e3 * statistics.median(times)


# ----- materializing baselines ----------------------------------------------------------------

def materialized_attention_maps(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, token_index: torch.Tensor,
    scale: Optional[float] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What attention-map tools do today: baddbmm + softmax + bmm, then slice the token columns.

    Holds the full (B*H, Lq, Lk) scores and probabilities in q's dtype. token_index (B, T).
    """
    batch, heads, num_queries, dim = q.shape
    num_keys = k.shape[2]
    scale = default_scale(dim) if scale is None else scale
    q3, k3 = q.reshape(-1, num_queries, dim), k.reshape(-1, num_keys, dim)
    empty = torch.empty(q3.shape[0], num_queries, num_keys, dtype=q.dtype, device=q.device)
    probs = torch.baddbmm(empty, q3, k3.transpose(1, 2), beta=0, alpha=scale).softmax(dim=-1)
    out = torch.bmm(probs, v.reshape(-1, num_keys, v.shape[-1]))
    probs = probs.view(batch, heads, num_queries, num_keys)
    index = token_index[:, None, None, :].expand(batch, heads, num_queries, token_index.shape[-1])
    maps = probs.gather(-1, index).float().mean(dim=1)
    return out.view(batch, heads, num_queries, -1), maps


def materialized_propagate(
    q: torch.Tensor, k: torch.Tensor, maps: torch.Tensor, scale: Optional[float] = None
) -> torch.Tensor:
    """The head-mean (B, Lq, Lk) self-attention matrix, materialized, times maps (B, Lk, C)."""
    scale = default_scale(q.shape[-1]) if scale is None else scale
    probs = (torch.matmul(q, k.transpose(-1, -2)) * scale).softmax(dim=-1)
    return torch.bmm(probs.float().mean(dim=1), maps.float())


# ----- the demo -------------------------------------------------------------------------------

def _cases(device: str, tiny: bool = False
           ) -> list[tuple[str, str, dict[str, Any], Callable[[], Any]]]:
    """(op, shape, public kwargs, baseline) at small realistic shapes, or `tiny` ones (for the
    Triton interpreter, which runs a kernel as Python, thousands of times slower)."""
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device).to(dtype)

    # three prompts, SD2.1 heads, 24x24 latents, CLIP keys; tiny: a 6x6 grid, two heads
    b, h, d, img, txt = (3, 2, 32, 36, 77) if tiny else (3, 5, 64, 576, 77)
    n, side = (256, 16) if tiny else (4096, 64)
    q, k_img = randn(b, h, img, d), randn(b, h, img, d)
    k_txt, v_txt = randn(b, h, txt, d), randn(b, h, txt, d)
    token_index = torch.arange(5, 13, device=device).repeat(b, 1)
    maps = torch.rand(b, img, 2, generator=gen, device=device)
    diff, orig = randn(9, n), randn(9, n)
    x0 = randn(6, 4, side, side, dtype=torch.float16)
    other = randn(6, 4, side, side, dtype=torch.float16)
    mask = torch.rand(6, 1, side, side, generator=gen, device=device) > 0.5
    seeds = torch.arange(1234, 1240)  # batched seeds: one Philox stream per row
    blend = {"x0": x0, "other": other, "mask": mask, "alpha": 0.7, "sigma": 0.71, "seed": seeds}
    blend_args = dispatch.get_op("masked_noise_blend").prepare(**blend)[0]
    return [
        ("attention_with_token_maps", f"B{b} H{h} Lq{img} Lk{txt} D{d}",
         {"q": q, "k": k_txt, "v": v_txt, "token_index": token_index},
         lambda: materialized_attention_maps(q, k_txt, v_txt, token_index)),
        ("attention_propagate", f"B{b} H{h} Lq{img} Lk{img} D{d} C2",
         {"q": q, "k": k_img, "maps": maps}, lambda: materialized_propagate(q, k_img, maps)),
        ("quality_mask", f"B9 N{n}", {"diff": diff, "orig": orig},
         lambda: quality_mask_ref(diff, orig, 1.0, 0.5)),
        ("masked_noise_blend", f"(6,4,{side},{side}) fp16 seeds", blend,
         lambda: masked_noise_blend_ref(*blend_args)),
    ]


def _max_error(actual: Any, expected: Any) -> float:
    pairs = zip(actual, expected) if isinstance(actual, tuple) else [(actual, expected)]
    return max((a.double() - e.double()).abs().max().item() for a, e in pairs)


def _say(message: str) -> None:
    print(message, flush=True)


def run(device: Optional[str] = None, budget_s: float = 0.3, impl: Optional[str] = None,
        tiny: bool = False, progress: Callable[[str], None] = lambda message: None
        ) -> list[dict[str, Any]]:
    """Check and time every op (forcing `impl` if given); returns one row per op.

    A row whose implementation is "ref" compared the reference with itself: no kernel ran.
    `progress` receives a line before and after each op (the interpreter is slow).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cases = _cases(device, tiny)
    rows = []
    for number, (op, shape, kwargs, baseline) in enumerate(cases, 1):
        call = functools.partial(getattr(lotts_kernels, op), **kwargs, impl=impl)
        implementation = dispatch.select(op, dispatch.get_op(op).prepare(**kwargs)[0], impl).name
        progress(f"[{number}/{len(cases)}] {op} {shape}: {implementation} ...")
        started = time.perf_counter()
        expected = getattr(lotts_kernels, op)(**kwargs, impl="ref")
        error = _max_error(call(), expected)
        op_ms, base_ms = median_ms(call, budget_s), median_ms(baseline, budget_s)
        rows.append({"op": op, "shape": shape, "impl": implementation, "error": error,
                     "op_ms": op_ms, "base_ms": base_ms, "speedup": base_ms / op_ms})
        progress(f"[{number}/{len(cases)}] {op}: done in {time.perf_counter() - started:.1f} s")
    return rows


def verdict(rows: list[dict[str, Any]]) -> str:
    """One plain sentence on what the table compared."""
    kernels = [r["op"] for r in rows if r["impl"] != "ref"]
    if not kernels:
        return ("No kernel ran: every op used the PyTorch reference, so each was compared with "
                "itself (max|err| 0 says nothing). Run on a GPU, or force the Triton kernels "
                "under the interpreter: TRITON_INTERPRET=1 python -m lotts_kernels.demo "
                "--impl triton (slow; tiny shapes).")
    skipped = [r["op"] for r in rows if r["impl"] == "ref"]
    note = f"; {', '.join(skipped)} ran the reference (compared with itself)" if skipped else ""
    return f"Kernels ran for {', '.join(kernels)}{note}."


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of `run`'s rows."""
    header = ("op", "shape", "impl", "max|err|", "op ms", "naive ms", "naive/op")
    lines = [(r["op"], r["shape"], r["impl"], f"{r['error']:.2e}", f"{r['op_ms']:.3f}",
              f"{r['base_ms']:.3f}", f"{r['speedup']:.2f}x") for r in rows]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    rendered = [header, tuple("-" * w for w in widths), *lines]
    return "\n".join(fmt.format(*line).rstrip() for line in rendered)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--impl", default=None, choices=dispatch.IMPLEMENTATIONS + ("auto",),
                        help="force one implementation (default: automatic choice)")
    parser.add_argument("--budget", type=float, default=0.3, help="seconds of timing per call")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny shapes (the default under TRITON_INTERPRET=1)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: steady timings on a shared machine; "
                             "0 keeps torch's default)")
    options = parser.parse_args(argv)
    device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if options.threads > 0 and device == "cpu":
        torch.set_num_threads(options.threads)
    interpreted = device == "cpu" and triton_utils.interpreting() and options.impl == "triton"
    tiny = options.tiny or interpreted
    print(f"lotts_kernels {lotts_kernels.__version__} demo on {device} "
          f"({torch.get_num_threads()} CPU threads), torch {torch.__version__}; naive = "
          "materialized attention (ops 1, 2) or the eager reference (ops 3, 4)", flush=True)
    if interpreted:
        print("Triton kernels under the interpreter (TRITON_INTERPRET=1): Python-speed, tiny "
              "shapes; the timings measure the interpreter, not the kernels.", flush=True)
    rows = run(device, 0.0 if interpreted else options.budget, options.impl, tiny, _say)
    print(format_table(rows))
    print(verdict(rows))


if __name__ == "__main__":
    main()
