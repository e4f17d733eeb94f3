"""Fused kernels for localized test-time scaling (LoTTS) of diffusion models.

Four ops, one module each under :mod:`lotts_kernels.ops` (reference, Triton kernels and, for the
two memory-bound ops, a CUDA extension); every op is a ``lotts::`` torch custom op whose
implementation is chosen per call by declared capability (:mod:`lotts_kernels.dispatch`).
:func:`explain` says which implementation a call would use and why the others were skipped.
"""
from lotts_kernels._version import __version__
from lotts_kernels.dispatch import KernelUnavailableError, explain, use_impl
from lotts_kernels.ops.attention import attention_propagate, attention_with_token_maps
from lotts_kernels.ops.masked_noise_blend import masked_noise_blend
from lotts_kernels.ops.quality_mask import quality_mask

__all__ = [
    "KernelUnavailableError",
    "__version__",
    "attention_propagate",
    "attention_with_token_maps",
    "explain",
    "masked_noise_blend",
    "quality_mask",
    "use_impl",
]
