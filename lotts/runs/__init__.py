"""Batch runs, in one-way layers: prompts and seeds -> atomic files -> the manifest ->
outputs -> the runner. Reports (:mod:`lotts.report`) read run directories through the
manifest only."""
