"""Serving: `pyedge run` (solo mode under gunicorn) and `pyedge serve` (one service on its own)."""
