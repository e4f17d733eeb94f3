"""Ahead-of-time compilation of our Triton kernels for real GPU targets, without a GPU.

A launcher describes a launch as a :class:`Launch` (the jitted kernel, the positional arguments
and the keyword constexprs/options it passes). :func:`compile_launch` runs those arguments
through Triton's own argument binder and specialization (the code ``kernel[grid](...)`` runs,
with the target's backend instead of the active driver's), then ``triton.compile`` with the
bundled ptxas. Tensors may live on the ``meta`` device: only dtype, strides and the (zero) data
pointer matter, so a FLUX-size launch costs no memory.

:class:`Resources` holds what the compiled kernel needs per block: registers, spill stores and
loads, stack, shared memory (Triton's dynamic allocation plus static) and the ptxas lines. The
ptxas log is only printed on a fresh compile, so it is kept next to Triton's cache entry
(``<cache>/lotts_aot/<hash>.json``); a cached kernel without that record is compiled once more
into a private cache directory to get it.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from lotts_kernels.triton_utils import Launch

if TYPE_CHECKING:  # Triton is optional for lotts_kernels; launchers import Launch without it
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

# cudaDevAttrMaxSharedMemoryPerBlockOptin (static + dynamic shared memory of one block), from
# the CUDA C Programming Guide's table of technical specifications: compute capability 8.0
# (A100) 163 KB, 9.0 (H100/H200) 227 KB. 8.6/8.9 have 99 KB; our AOT targets are 80 and 90.
SHARED_MEMORY_PER_BLOCK = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
TARGET_CAPABILITIES = (80, 90)


@contextlib.contextmanager
def compiled_mode() -> Iterator[None]:
    """Triton's compiled (not interpreted) mode inside the block, even under TRITON_INTERPRET=1:
    launchers then describe the launch a GPU gets and ``triton.jit`` makes real kernels."""
    from triton import knobs

    with knobs.runtime.scope():
        knobs.runtime.interpret = False
        yield


def ptxas_versions() -> str:
    """The bundled ptxas releases Triton uses for sm_80 and sm_90 (two binaries in 3.9)."""
    from triton.backends.nvidia.compiler import get_ptxas

    found = []
    for capability in TARGET_CAPABILITIES:
        tool = get_ptxas(capability)
        found.append(f"sm_{capability}: {Path(tool.path).name} {tool.version}")
    return ", ".join(found)


def jit_function(launch: Launch) -> Any:
    """The compiled-mode ``triton.JITFunction`` behind a launch's kernel (LazyJit, autotune)."""
    from triton.runtime.jit import JITFunction

    kernel = launch.kernel
    if hasattr(kernel, "get"):          # lotts_kernels.triton_utils.LazyJit
        with compiled_mode():
            kernel = kernel.get(False)
    while not isinstance(kernel, JITFunction):  # triton.autotune's Autotuner wraps .fn
        kernel = kernel.fn
    return kernel


def target(capability: int) -> GPUTarget:
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", capability, 32)


@dataclass
class Resources:
    """Per-block resources of one compiled kernel (ptxas -v and Triton's metadata)."""

    kernel: str
    capability: int
    registers: int
    spill_stores: int
    spill_loads: int
    stack: int
    shared: int              # Triton's dynamic shared memory (metadata.shared)
    static_shared: int       # ptxas "smem" (static __shared__), 0 for most Triton kernels
    num_warps: Optional[int] = None    # None for CUDA C++ kernels (block size set at launch)
    num_stages: Optional[int] = None
    ptxas: list[str] = field(default_factory=list)

    @property
    def total_shared(self) -> int:
        return self.shared + self.static_shared

    def problems(self) -> list[str]:
        """Why this kernel must not be launched on its target: spills, too much shared memory."""
        found = []
        if self.spill_stores or self.spill_loads:
            found.append(f"spills registers ({self.spill_stores} B stores, {self.spill_loads} B "
                         f"loads, {self.stack} B stack, {self.registers} registers)")
        limit = SHARED_MEMORY_PER_BLOCK[self.capability]
        if self.total_shared > limit:
            found.append(f"needs {self.total_shared} B of shared memory; sm_{self.capability} "
                         f"allows {limit} B per block")
        return found


_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(log: str) -> dict[str, dict[str, int]]:
    """Per entry function of a ``ptxas -v`` log: registers, spill_stores, spill_loads, stack and
    static_shared (bytes of static ``__shared__``)."""
    entries = {}
    for block in re.split(r"(?=ptxas[\w-]* info\s*: Compiling entry function)", log)[1:]:
        name = re.search(r"Compiling entry function '([^']+)'", block).group(1)
        spills = _SPILLS.search(block)
        registers = _REGISTERS.search(block)
        if spills is None or registers is None:
            raise ValueError(f"unrecognised ptxas -v entry for {name}:\n{block}")
        smem = _SMEM.search(block)
        entries[name] = {"registers": int(registers.group(1)), "stack": int(spills.group(1)),
                         "spill_stores": int(spills.group(2)),
                         "spill_loads": int(spills.group(3)),
                         "static_shared": int(smem.group(1)) if smem else 0}
    if not entries:
        raise ValueError(f"no entry function in the ptxas -v log:\n{log}")
    return entries


def specialize(launch: Launch, gpu: GPUTarget) -> tuple[ASTSource, dict]:
    """The (source, options) ``kernel[grid](*args, **kwargs)`` would compile for `gpu`.

    Mirrors ``JITFunction.run``: its default options, its binder (argument specialization:
    16-divisible integers and pointers, integers equal to 1, do_not_specialize) and
    ``_pack_args``, with the target's backend in place of the active driver's.
    """
    from triton import knobs
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    jit = jit_function(launch)
    kwargs = dict(launch.kwargs)
    kwargs["debug"] = kwargs.get("debug", jit.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
    backend = make_backend(gpu)
    binder = create_function_from_signature(jit.signature, jit.params, backend)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = jit._pack_args(backend, kwargs, bound,
                                                           specialization, options)
    return ASTSource(jit, signature, constexprs, attrs), options.__dict__


def _compile_logged(source: ASTSource, gpu: GPUTarget, options: dict):
    """triton.compile with ptxas's -v log captured (printed by Triton only on a fresh compile)."""
    import triton
    from triton import knobs

    printed = io.StringIO()
    with knobs.nvidia.scope(), contextlib.redirect_stdout(printed):
        knobs.nvidia.dump_ptxas_log = True
        kernel = triton.compile(source, target=gpu, options=options)
    return kernel, printed.getvalue()


def _records() -> Path:
    """Our records next to Triton's cache (ptxas logs, nvcc logs)."""
    from triton import knobs

    return Path(knobs.cache.dir) / "lotts_aot"


def _record_path(kernel_hash: str, capability: int) -> Path:
    return _records() / f"{kernel_hash}-sm{capability}.json"


def compile_launch(launch: Launch, capability: int) -> Resources:
    """Compile `launch` for sm_`capability`; raises Triton's error if it does not compile."""
    _import_compiler()
    with compiled_mode():  # Triton's code generator also reads the interpreter switch
        return _compile_launch(launch, capability)


def _import_compiler() -> None:
    """Import Triton's compiler and NVIDIA backend in the mode Triton itself was imported in
    (gluon checks its helpers against that mode at import), before switching modes."""
    import triton.backends.nvidia.compiler  # noqa: F401
    import triton.compiler  # noqa: F401
    import triton.experimental.gluon  # noqa: F401 - the binder imports it on first use
    from triton.compiler import make_backend

    make_backend(target(TARGET_CAPABILITIES[0]))


def _compile_launch(launch: Launch, capability: int) -> Resources:
    from triton import knobs

    gpu = target(capability)
    source, options = specialize(launch, gpu)
    kernel, log = _compile_logged(source, gpu, options)
    record = _record_path(kernel.hash, capability)
    if "Compiling entry function" in log:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"ptxas": log}))
    elif record.is_file():
        log = json.loads(record.read_text())["ptxas"]
    else:  # compiled earlier by a normal launch: compile once more, privately, for the log
        with tempfile.TemporaryDirectory() as private, knobs.cache.scope():
            knobs.cache.dir = private
            kernel, log = _compile_logged(source, gpu, options)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"ptxas": log}))
    lines = [line.strip() for line in log.splitlines() if "ptxas" in line or "bytes" in line]
    meta = kernel.metadata
    (fields,) = parse_ptxas(log).values()
    return Resources(kernel=kernel.name, capability=capability, shared=meta.shared,
                     num_warps=meta.num_warps, num_stages=meta.num_stages, ptxas=lines, **fields)


def as_row(resources: Resources) -> dict[str, Any]:
    row = asdict(resources)
    row.pop("ptxas")
    return row


# ----- the CUDA C++ sources (csrc/) -----------------------------------------------------------

def find_nvcc() -> Optional[str]:
    """nvcc of $CUDA_HOME / $CUDA_PATH / torch's CUDA_HOME / /usr/local/cuda, else on PATH."""
    from torch.utils import cpp_extension

    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                 cpp_extension.CUDA_HOME, "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _nvcc() -> str:
    nvcc = find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found: set CUDA_HOME to a CUDA toolkit")
    return nvcc


def _demangle(names: list[str]) -> list[str]:
    """Readable kernel names via cu++filt (CUDA toolkit) or c++filt (binutils), if present."""
    nvcc = Path(_nvcc()).resolve()
    tools = [str(nvcc.with_name("cu++filt")), shutil.which("cu++filt"), shutil.which("c++filt")]
    for tool in tools:
        if tool and Path(tool).exists():
            done = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True,
                                  check=False)
            lines = done.stdout.splitlines()
            if done.returncode == 0 and len(lines) == len(names):
                return [line.replace("(anonymous namespace)::", "") for line in lines]
    return names


def nvcc_command(source: Path, capability: int, output: Path) -> list[str]:
    """nvcc -c of one csrc/*.cu file with the flags of the extension build (torch's common nvcc
    flags, ours, the architecture's), plus ``-Xptxas -v``."""
    from torch.utils import cpp_extension

    from lotts_kernels import cuda_build

    major, minor = divmod(capability, 10)
    return [_nvcc(), "-c", str(source), "-o", str(output), f"-I{cuda_build.source_dir()}",
            *cpp_extension.COMMON_NVCC_FLAGS, *cuda_build.EXTRA_CUDA_CFLAGS,
            *cuda_build.arch_flags((major, minor)),
            "-Xptxas", "-v"]


@functools.cache
def _nvcc_log(command: tuple[str, ...], sources_digest: str) -> str:
    """ptxas -v log of one nvcc command, cached next to Triton's cache by sources and flags."""
    key = hashlib.sha256(repr((command[1:], sources_digest)).encode()).hexdigest()[:24]
    record = _records() / f"nvcc-{key}.log"
    if record.is_file():
        return record.read_text()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"nvcc failed ({done.returncode}):\n{done.stderr[-4000:]}")
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(done.stderr)
    return done.stderr


def compile_cuda_source(source: Path, capability: int) -> list[Resources]:
    """Resources of every kernel in one CUDA source compiled for sm_`capability`."""
    from lotts_kernels import cuda_build

    digest = hashlib.sha256()
    for path in cuda_build.source_files():
        digest.update(path.name.encode() + path.read_bytes())
    with tempfile.TemporaryDirectory() as scratch:
        command = tuple(nvcc_command(source, capability, Path(scratch) / "kernel.o"))
        log = _nvcc_log(command, digest.hexdigest())
    entries = parse_ptxas(log)
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    return [Resources(kernel=name, capability=capability, shared=0, ptxas=lines, **fields)
            for name, fields in zip(_demangle(list(entries)), entries.values())]


# ----- the launches to check: every kernel at each backbone's shapes ---------------------------

@dataclass(frozen=True)
class Backbone:
    """Shapes one backbone's LoTTS run gives the kernels (batch 3: the localization prompts)."""

    name: str
    heads: int
    head_dim: int
    image_tokens: int        # queries (and self-attention keys) at the attention level used
    text_keys: int           # cross-attention keys; FLUX: joint attention over text + image
    latent: tuple[int, ...]  # one latent (C, H, W), or FLUX's packed (tokens, channels)
    joint: bool = False


BACKBONES = (
    Backbone("SD2.1", heads=5, head_dim=64, image_tokens=96 * 96, text_keys=77,
             latent=(4, 96, 96)),
    Backbone("SDXL", heads=10, head_dim=64, image_tokens=64 * 64, text_keys=77,
             latent=(4, 128, 128)),
    Backbone("FLUX", heads=24, head_dim=128, image_tokens=4096, text_keys=512,
             latent=(4096, 64), joint=True),
)
BATCH = 3
MAP_TOKENS = 8     # key tokens whose maps op 1 returns
MAP_CHANNELS = 2   # propagate's maps: (diff, orig)


@dataclass
class Case:
    """One kernel launch to compile; `configs` lists the autotune candidates with the pruning's
    verdict (problems, shared-memory estimate) for a target."""

    kernel: str
    name: str
    dtype: str
    launch: Launch
    pruning: Optional[Callable[[Any, int], tuple[list[str], Optional[int]]]] = None
    candidates: tuple = ()

    def configs(self, capability: int, include_pruned: bool = False
                ) -> list[tuple[Any, list[str], Optional[int]]]:
        if self.pruning is None:
            return [(None, [], None)]
        rows = [(c, *self.pruning(c, capability)) for c in self.candidates]
        return [row for row in rows if include_pruned or not row[1]]


def _named_args(launch: Launch) -> dict:
    """Kernel arguments by name, as Triton's autotuner hands them to the pruning."""
    names = jit_function(launch).arg_names
    return {**dict(zip(names, launch.args)), **launch.kwargs}


def _attention_case(kernel: str, name: str, dtype_name: str, launch: Launch) -> Case:
    from lotts_kernels.ops import attention

    args = _named_args(launch)

    def pruning(config, capability):
        limit = SHARED_MEMORY_PER_BLOCK[capability]
        return (attention.config_problems(config, args, capability, limit),
                attention.shared_memory_estimate(config, args, capability))

    return Case(kernel, name, dtype_name, launch, pruning, tuple(attention._configs(False)))


def attention_cases(backbone: Backbone, dtype, dtype_name: str,
                    head_dim: Optional[int] = None) -> list[Case]:
    import torch

    from lotts_kernels.ops import attention

    meta = dict(dtype=dtype, device="meta")
    d = head_dim or backbone.head_dim
    heads, image = backbone.heads, backbone.image_tokens
    keys = image + backbone.text_keys if backbone.joint else backbone.text_keys
    queries = keys if backbone.joint else image
    q = torch.empty(BATCH, heads, queries, d, **meta)
    kv = torch.empty(BATCH, heads, keys, d, **meta)
    tokens = torch.empty(BATCH, MAP_TOKENS, dtype=torch.int64, device="meta")
    label = backbone.name if head_dim is None else f"{backbone.name} D={d}"
    with compiled_mode():
        maps_launch = attention.token_maps_launch(q, kv, kv, tokens, d ** -0.5)[0]
        q_self = torch.empty(BATCH, heads, image, d, **meta)
        maps = torch.empty(BATCH, image, MAP_CHANNELS, dtype=torch.float32, device="meta")
        propagate = attention.propagate_launch(q_self, q_self, maps, d ** -0.5)[0]
    return [_attention_case("attention_with_token_maps", label, dtype_name, maps_launch),
            _attention_case("attention_propagate", label, dtype_name, propagate)]


def quality_mask_cases(backbone: Backbone, dtype, dtype_name: str,
                       positions: Optional[int] = None) -> list[Case]:
    import math

    import torch

    from lotts_kernels.ops import quality_mask

    n = positions or math.prod(backbone.latent[-2:] if not backbone.joint else
                               backbone.latent[:1])
    rows = torch.empty(BATCH, n, dtype=dtype, device="meta")
    with compiled_mode():
        launch = quality_mask.quality_mask_launch(rows, rows, 1.0, 0.3)[0]
    label = backbone.name if positions is None else f"N={n}"
    return [Case("quality_mask", label, dtype_name, launch)]


def blend_cases(backbone: Backbone, dtype, dtype_name: str, noise_tensor: bool = False
                ) -> list[Case]:
    import torch

    from lotts_kernels.ops import masked_noise_blend

    x0 = torch.empty(BATCH, *backbone.latent, dtype=dtype, device="meta")
    mask_shape = (BATCH, backbone.latent[0], 1) if backbone.joint else \
        (BATCH, 1, *backbone.latent[1:])
    mask = torch.empty(mask_shape, dtype=torch.bool, device="meta")
    seeds = torch.empty(BATCH, dtype=torch.int64, device="meta")
    launch = masked_noise_blend.masked_noise_blend_launch
    with compiled_mode():
        cases = [Case("masked_noise_blend", f"{backbone.name} blend", dtype_name,
                      launch(x0, x0, mask, None, 1.0, None, 0.0, None, None, None, False)[0]),
                 Case("masked_noise_blend", f"{backbone.name} seeded noise", dtype_name,
                      launch(x0, x0, mask, None, 0.8, None, 0.6, None, 1234, None, False)[0]),
                 Case("masked_noise_blend", f"{backbone.name} per-row seeds", dtype_name,
                      launch(x0, x0, mask, None, 0.8, None, 0.6, None, None, seeds, False)[0])]
        if noise_tensor:
            cases.append(Case("masked_noise_blend", f"{backbone.name} noise tensor", dtype_name,
                              launch(x0, x0, mask, None, 0.8, None, 0.6, x0, None, None, True)[0]))
    return cases


DTYPE_NAMES = ("fp16", "fp32", "fp32+tf32", "bf16")


@contextlib.contextmanager
def _dtype(dtype_name: str):
    """The torch dtype of `dtype_name`, with TF32 allowed inside the block for "fp32+tf32"."""
    import torch

    allowed = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = dtype_name == "fp32+tf32"
    try:
        yield {"fp16": torch.float16, "bf16": torch.bfloat16}.get(dtype_name, torch.float32)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed


def representative_cases(dtype_name: str) -> list[Case]:
    """Every kernel at one shape per backbone (what the test suite compiles)."""
    cases = []
    with _dtype(dtype_name) as dtype:
        for backbone in BACKBONES:
            cases += attention_cases(backbone, dtype, dtype_name)
            if dtype_name != "fp32+tf32":  # TF32 changes attention only
                cases += quality_mask_cases(backbone, dtype, dtype_name)
                cases += blend_cases(backbone, dtype, dtype_name)
        if dtype_name != "fp32+tf32":
            cases += quality_mask_cases(BACKBONES[0], dtype, dtype_name, positions=65536)
    return cases


def full_matrix() -> list[Case]:
    """The representative cases plus wide heads (D=256), tensor noise and chunked masks."""
    cases = []
    for dtype_name in DTYPE_NAMES:
        cases += representative_cases(dtype_name)
        with _dtype(dtype_name) as dtype:
            cases += attention_cases(BACKBONES[0], dtype, dtype_name, head_dim=256)
            if dtype_name != "fp32+tf32":
                for backbone in BACKBONES:
                    cases += [c for c in blend_cases(backbone, dtype, dtype_name, True)
                              if c.name.endswith("noise tensor")]
    return cases


# ----- command line: the representative compiles as JSON lines --------------------------------

def check_representative(dtype_name: str, capability: int) -> list[dict[str, Any]]:
    """Compile every kept config of the representative cases; one row per compile with the
    measured resources, their problems and the pruning's shared-memory estimate."""
    rows = []
    for case in representative_cases(dtype_name):
        for config, _, estimate in case.configs(capability):
            launch = case.launch if config is None else case.launch.with_config(config)
            resources = compile_launch(launch, capability)
            rows.append({"case": f"{case.kernel} {case.name} {case.dtype}",
                         "config": None if config is None else repr(config.all_kwargs()),
                         "capability": capability, "problems": resources.problems(),
                         "estimate": estimate, "total_shared": resources.total_shared,
                         **as_row(resources)})
    return rows


def run_isolated(module_args: list[str], timeout: float = 3000) -> str:
    """Run ``python -m lotts_kernels.aot ...`` in a fresh process without TRITON_INTERPRET:
    Triton's code generator misbehaves in a process that imported Triton in interpreter mode
    ('block_argument' object has no attribute 'data'), so the test suite compiles out of
    process."""
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "lotts_kernels.aot", *module_args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"AOT compile failed ({done.returncode}):\n{done.stderr[-6000:]}")
    return done.stdout


def main(argv: Optional[list[str]] = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m lotts_kernels.aot",
                                     description="AOT-compile the representative launches.")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, required=True)
    parser.add_argument("--capability", type=int, choices=TARGET_CAPABILITIES, required=True)
    args = parser.parse_args(argv)
    for row in check_representative(args.dtype, args.capability):
        sys.stdout.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
