"""How the Triton launchers launch: on the inputs' GPU, and with any Triton version's knobs.

Fix 3 of issue 10: Triton launches on the *current* device and its current stream, so a tensor
on cuda:1 in a process whose current device is cuda:0 ran GPU-1 pointers on GPU 0. Every
launcher now enters :func:`lotts_kernels.triton_utils.device_guard` of its input around the
launch. Without a GPU this is checked by recording the guard and the launches under the
interpreter; with two GPUs, by running on cuda:1 (gpu-marked).

Fix 4: ``triton.knobs`` (Triton >= 3.3) was read unguarded at import of the attention backend;
only lotts_kernels.triton_utils reads it now, through getattr.
"""
from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

import lotts_kernels  # noqa: E402
from lotts_kernels import triton_utils  # noqa: E402
from tests.helpers import randn  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _calls():
    """One small call of each op through its Triton launcher."""
    q, k, v = randn(2, 2, 9, 8, seed=1), randn(2, 2, 11, 8, seed=2), randn(2, 2, 11, 8, seed=3)
    yield "attention_with_token_maps", lambda: lotts_kernels.attention_with_token_maps(
        q, k, v, torch.tensor([0, 4]), impl="triton")
    yield "attention_propagate", lambda: lotts_kernels.attention_propagate(
        q, k, randn(2, 11, 2, seed=4), impl="triton")
    yield "quality_mask", lambda: lotts_kernels.quality_mask(
        randn(2, 13, seed=5), randn(2, 13, seed=6), impl="triton")
    x0 = randn(2, 4, 6, 6, seed=7)
    yield "masked_noise_blend", lambda: lotts_kernels.masked_noise_blend(
        x0, randn(2, 4, 6, 6, seed=8), torch.ones(2, 1, 3, 3, dtype=torch.bool), 0.5, 0.5,
        seed=3, impl="triton")


@pytest.mark.parametrize("op, call", list(_calls()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_launch_runs_inside_the_inputs_device_guard(monkeypatch, op, call):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    events: list = []

    @contextmanager
    def recording_guard(tensor):
        events.append(("enter", tensor.device))
        try:
            yield
        finally:
            events.append(("exit", tensor.device))

    launch = triton_utils.LazyJit.__getitem__

    def recording_launch(self, grid):
        events.append(("launch", self.__name__))
        return launch(self, grid)

    monkeypatch.setattr(triton_utils, "device_guard", recording_guard)
    monkeypatch.setattr(triton_utils.LazyJit, "__getitem__", recording_launch)
    call()
    launches = [i for i, event in enumerate(events) if event[0] == "launch"]
    assert launches, f"{op}: no Triton launch recorded ({events})"
    for i in launches:
        entered = [e for e in events[:i] if e[0] == "enter"]
        exited = [e for e in events[:i] if e[0] == "exit"]
        assert len(entered) > len(exited), f"{op}: launch outside the device guard: {events}"
        assert entered[-1][1] == torch.device("cpu")


def test_device_guard_selects_the_tensors_gpu(monkeypatch):
    chosen = []

    @contextmanager
    def fake_device(device):
        chosen.append(device)
        yield

    monkeypatch.setattr(triton_utils.torch.cuda, "device", fake_device)

    class OnSecondGpu:
        device = torch.device("cuda", 1)

    with triton_utils.device_guard(OnSecondGpu()):
        pass
    assert chosen == [torch.device("cuda", 1)]
    with triton_utils.device_guard(torch.zeros(1)):  # CPU (the interpreter): no device switch
        pass
    assert chosen == [torch.device("cuda", 1)]


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_gpu_launch_on_second_device_while_first_is_current():
    torch.cuda.set_device(0)
    x0 = torch.randn(2, 4, 64, 64, device="cuda:1")
    other = torch.randn_like(x0)
    mask = torch.rand(2, 1, 32, 32, device="cuda:1") > 0.5
    out = lotts_kernels.masked_noise_blend(x0, other, mask, 0.7, 0.3, seed=5, impl="triton")
    expected = lotts_kernels.masked_noise_blend(x0, other, mask, 0.7, 0.3, seed=5, impl="ref")
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    q = torch.randn(2, 3, 100, 64, device="cuda:1", dtype=torch.float16)
    k = torch.randn(2, 3, 77, 64, device="cuda:1", dtype=torch.float16)
    _, maps = lotts_kernels.attention_with_token_maps(q, k, k, torch.tensor([3, 9]),
                                                      impl="triton")
    _, ref_maps = lotts_kernels.attention_with_token_maps(q, k, k, torch.tensor([3, 9]),
                                                          impl="ref")
    torch.testing.assert_close(maps, ref_maps, atol=2e-3, rtol=2e-3)


_NO_KNOBS = r"""
import triton
if hasattr(triton, "knobs"):
    del triton.knobs  # what Triton < 3.3 looks like from here
import torch
import lotts_kernels
from lotts_kernels import triton_utils
assert triton_utils.interpreting() is True  # from TRITON_INTERPRET=1 in the environment
q = torch.randn(1, 1, 5, 8)
out, maps = lotts_kernels.attention_with_token_maps(q, q, q, torch.tensor([1]), impl="triton")
print("OK", tuple(maps.shape))
"""


def test_import_and_launch_without_triton_knobs():
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _NO_KNOBS], capture_output=True, text=True,
                          env=env, timeout=300, check=False, cwd=REPO)
    assert done.returncode == 0 and "OK (1, 5, 1)" in done.stdout, done.stderr[-3000:]


def test_only_triton_utils_reads_triton_knobs():
    # aot.py is the ahead-of-time compile tooling (tests, benchmarks), written against the
    # pinned Triton's internals; nothing imports it at run time.
    readers = [p.relative_to(REPO) for p in (REPO / "lotts_kernels").rglob("*.py")
               if "knobs" in p.read_text() and p.name not in ("triton_utils.py", "aot.py")]
    assert readers == []
