"""``python -m peer``: flags and environment in, a running peer out."""
