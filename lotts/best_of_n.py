"""Best-of-N: N full generations from seeds seed..seed+N-1, the verifier keeps the best.

It shares LoTTS' generation, scoring and cost accounting (LoTTS with no refinements), so the
two are compared in one unit: same result type, same seeds for the originals, same NFE count.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional, Union

from lotts.config import LoTTSConfig
from lotts.result import LoTTSResult
from lotts.sampler import LoTTS, Prompt, VerifierSpec


def best_of_n(pipe: Any, prompt: Prompt, n: int, verifier: VerifierSpec, seed: int = 0, *,
              report_with: Any = None, batch_size: Optional[int] = None,
              verifier_options: Optional[dict] = None,
              on_phase: Optional[Callable[[str], None]] = None, **pipe_kwargs: Any
              ) -> Union[LoTTSResult, list[LoTTSResult]]:
    """Generate `n` images per prompt and return them scored, the best selected.

    batch_size: images per pipeline call (None: all n at once). on_phase: as in LoTTS. Other
    keyword arguments go to the pipeline as in :class:`~lotts.LoTTS`. Returns a result per
    prompt (a list for a list).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    config = LoTTSConfig(num_seeds=n, num_refinements=0, generate_batch_size=batch_size)
    runner = LoTTS(pipe, verifier, config, report_with=report_with,
                   verifier_options=verifier_options, on_phase=on_phase)
    results = runner(prompt, seed=seed, **pipe_kwargs)
    for result in results if isinstance(results, list) else [results]:
        result.method = "best_of_n"
    return results
