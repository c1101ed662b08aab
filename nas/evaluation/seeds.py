"""Mean ± std over training-seed replicates (the fine-grained figures, MUG/UTA ablations)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """{"mean", "std", "n", "values"}: sample std (ddof 1), 0.0 for a single value."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean_std of no values")
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(vals), "values": vals}


def aggregate(per_seed: Sequence[Any]) -> Any:
    """Same nesting as each seed's result; every numeric leaf becomes `mean_std` over the seeds.
    Non-numeric leaves must agree across seeds (they are kept); a key missing in one seed is an error."""
    if not per_seed:
        raise ValueError("aggregate of no seeds")
    first = per_seed[0]
    if isinstance(first, dict):
        keys = list(first)
        for k, other in enumerate(per_seed[1:], 1):
            if not isinstance(other, dict) or set(other) != set(keys):
                raise ValueError(
                    f"seed {k} has keys {sorted(other) if isinstance(other, dict) else other!r}, "
                    f"seed 0 has {sorted(keys)}"
                )
        return {key: aggregate([seed[key] for seed in per_seed]) for key in keys}
    if isinstance(first, bool) or not isinstance(first, (int, float)):
        return first
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in per_seed):
        raise ValueError(f"mixed numeric and non-numeric values across seeds: {list(per_seed)!r}")
    return mean_std(per_seed)


def fmt_mean_std(stats: dict[str, Any], digits: int = 1) -> str:
    """ "12.3 ± 0.4" (or "12.3" for a single seed)."""
    if stats["n"] == 1:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"
