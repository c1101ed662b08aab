"""nas-harness: a reproducibility harness for NAS (AAAI 2025), with ALBEF, MUG and UTA.

The library is importable without Sacred, DVC or a GPU; `experiments/` holds the Sacred stages.
"""

__version__ = "0.1.0"
