"""LoTTS: localized test-time scaling for diffusers text-to-image pipelines."""
from lotts._version import __version__

from lotts.best_of_n import best_of_n
from lotts.config import LoTTSConfig
from lotts.result import Candidate, Cost, LoTTSResult
from lotts.sampler import LoTTS

__all__ = ["Candidate", "Cost", "LoTTS", "LoTTSConfig", "LoTTSResult", "__version__", "best_of_n"]
