"""The four LoTTS ops, one module per op (the two attention ops share one kernel and module).

Each module holds, in this order: the public function and its argument checks, the ``lotts::``
torch custom op and its fake, the PyTorch reference (``<op>_ref``), the Triton kernel and
launcher (``<op>_triton``), the CUDA launcher where there is one (``<op>_cuda``) and the
registration of those implementations with :mod:`lotts_kernels.dispatch`.

* :mod:`lotts_kernels.ops.attention`: attention_with_token_maps, attention_propagate
* :mod:`lotts_kernels.ops.quality_mask`: quality_mask
* :mod:`lotts_kernels.ops.masked_noise_blend` (+ ``masked_noise_blend_layout``, the index
  layout its Triton and CUDA kernels share): masked_noise_blend

The public functions are re-exported by :mod:`lotts_kernels`; this package does not re-export
them, so that ``lotts_kernels.ops.quality_mask`` is always the module.
"""
