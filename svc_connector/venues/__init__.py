"""One folder per venue, each with the same file set (see base.py)."""
