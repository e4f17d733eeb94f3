"""Kernel backends: Triton kernels (imported only when Triton can run) and the CUDA extension."""
