"""Errors a user can fix. The CLI prints any :class:`LoTTSUserError` as one line and exits 2."""
from __future__ import annotations


class LoTTSUserError(Exception):
    """A problem with the user's inputs, files or environment (not a bug in lotts)."""


class UsageError(LoTTSUserError):
    """A command-line option or argument that cannot work (a bad value, a missing device)."""


class PromptFileError(LoTTSUserError):
    """The prompt file is missing, unreadable or malformed."""


class ManifestConflictError(LoTTSUserError):
    """The output directory holds the manifest of a run with other settings."""


class WorldTrainingError(LoTTSUserError):
    """Retraining the miniature world met a cache or checkpoint it cannot use."""
