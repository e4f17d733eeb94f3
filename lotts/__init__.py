"""LoTTS: localized test-time scaling for diffusers text-to-image pipelines."""
from lotts_kernels._version import __version__

__all__ = ["__version__"]
