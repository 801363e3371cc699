"""Calibration defaults (no torch import: the CLI's help text shows them)."""

DEFAULT_TAUS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.925, 0.95, 0.97, 0.98, 0.99, 1.0)
DEFAULT_SAMPLES = 8  # query blocks per call (1024 rows at block 128)
