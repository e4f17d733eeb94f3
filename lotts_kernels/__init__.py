"""Fused kernels for localized test-time scaling (LoTTS) of diffusion models.

Four ops, each with a PyTorch reference (:mod:`lotts_kernels.reference`), Triton kernels and,
for the two memory-bound ops, a CUDA extension; every op is a ``lotts::`` torch custom op.
"""
from lotts_kernels._dispatch import KernelUnavailableError, use_impl
from lotts_kernels._version import __version__
from lotts_kernels.ops import (
    attention_propagate,
    attention_with_token_maps,
    masked_noise_blend,
    quality_mask,
)

__all__ = [
    "KernelUnavailableError",
    "__version__",
    "attention_propagate",
    "attention_with_token_maps",
    "masked_noise_blend",
    "quality_mask",
    "use_impl",
]
