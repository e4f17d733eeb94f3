"""What the command prints besides results: one progress bar per run, status lines unless
``--quiet``, and library warnings said once, briefly, or not at all when they say nothing
the user can act on.

- transformers' "requires torchvision; falling back to ...ImageProcessorPil" notice: the PIL
  fallback is what lotts uses anyway, so it is dropped.
- diffusers' and transformers' loading bars ("Loading pipeline components", "Loading
  weights"): off; the command prints one "loading ..." line instead (unless quiet), so the
  run's own bar over prompts is the only bar.
- diffusers' long-prompt truncation warning, logged at every text encoding (LoTTS encodes a
  prompt for generation and again for localization) with the whole cut text: said once per
  command, with the start of the cut text.
"""
from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

TRUNCATION = re.compile(r"The following part of your input was truncated because (.*?):\s*(.*)",
                        re.DOTALL)
CUT_TEXT_CHARS = 40


class _DropTorchvisionFallback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


class _TruncationOnce(logging.Filter):
    """Rewrites the first truncation warning to one short line and drops the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.said = False

    def filter(self, record: logging.LogRecord) -> bool:
        match = TRUNCATION.match(record.getMessage())
        if match is None:
            return True
        if self.said:
            return False
        self.said = True
        reason = re.sub(r"\s+", " ", match.group(1)).replace("`", "")
        cut = re.sub(r"[\[\]'\"]|\s+", " ", match.group(2)).strip()
        cut = cut if len(cut) <= CUT_TEXT_CHARS else cut[:CUT_TEXT_CHARS - 3].rstrip() + "..."
        record.msg, record.args = (f"a prompt was truncated to fit the text encoder ({reason}); "
                                   f"ignored: '{cut}' (said once)"), ()
        return True


def quiet_libraries() -> None:
    """Install the filters above (once per process; the command's own process only)."""
    logging.getLogger("transformers.utils.import_utils").addFilter(_DropTorchvisionFallback())
    from diffusers.utils import logging as diffusers_logging

    root = diffusers_logging.get_logger("diffusers")
    if not any(isinstance(f, _TruncationOnce) for h in root.handlers for f in h.filters):
        once = _TruncationOnce()
        for handler in root.handlers:  # records of every diffusers module pass through these
            handler.addFilter(once)


@contextmanager
def no_loading_bars() -> Iterator[None]:
    """diffusers' and transformers' loading bars off inside the block, as they were after."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    was = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            diffusers_logging.enable_progress_bar()
        if was[1]:
            transformers_logging.enable_progress_bar()


def status(message: str, quiet: bool) -> None:
    """One line of what the command is doing, on stderr (nothing when quiet)."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)
