"""A miniature world of captioned shape scenes with planted defects (see scenes.py)."""
