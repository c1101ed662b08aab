"""Linear probes on frozen image features, one per scene attribute (MUG_UTA.md §1, §2).

A probe is scikit-learn's multinomial logistic regression on standardised features (the usual
linear-evaluation protocol on frozen encoders, with L-BFGS instead of MUG's LARS: at these sizes the
problem is small and convex, and L-BFGS converges deterministically). Accuracy is in percent, next
to the chance level (1 / classes) and the majority-class rate, so a probe that learned nothing is
visible as such.

`outcomes=True` adds the per-row result of the test set: "_correct" (0/1 per test row that has a
label, in row order) and "_rows" (those rows' indices), the per-case data of the seed x case
bootstrap intervals (`nas.evaluation.stats`); callers drop the underscored keys before writing JSON.
A probe that cannot be fitted (fewer than 2 training classes, no labelled test row: a tiny data set)
is returned by `probe_attributes` as {"skipped": reason} instead of stopping the stage.

`pooled_features` turns ViT tokens into probe features: "mean" (mean-pooled patch tokens), "cls",
or "grid" (patch tokens average-pooled to a g x g grid and concatenated: a feature that keeps where
things are, for the attributes about position; mean pooling discards position by construction).
"""

from __future__ import annotations

import collections
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class LinearProbeConfig:
    C: float = 1.0  # inverse L2 strength (scikit-learn default)
    max_iter: int = 2000

    def __post_init__(self) -> None:
        if not self.C > 0:
            raise ValueError(f"C must be > 0, got {self.C}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")


def _rows_with_labels(x: np.ndarray, labels: Sequence[Any], what: str) -> tuple[np.ndarray, list[str]]:
    if len(labels) != len(x):
        raise ValueError(f"{what}: {len(x)} feature rows but {len(labels)} labels")
    keep = _labelled(labels)
    return x[keep], [str(labels[i]) for i in keep]


def _labelled(labels: Sequence[Any]) -> list[int]:
    return [i for i, label in enumerate(labels) if label is not None]


class ProbeSkipped(ValueError):
    """The probe cannot be fitted on these labels (too few classes or rows)."""


def pooled_features(tokens: Any, kind: str, grid: int = 2) -> Any:
    """Probe features [B, F] of ViT tokens [B, 1 + N, D] (CLS first, N = a square patch grid):
    "mean" of the patch tokens, the "cls" token, or "grid": the patch-token map average-pooled to
    `grid` x `grid` cells, concatenated in row-major order ([B, grid * grid * D])."""
    import torch.nn.functional as F

    patches = tokens[:, 1:]
    if kind == "mean":
        return patches.mean(dim=1)
    if kind == "cls":
        return tokens[:, 0]
    if kind == "grid":
        side = round(patches.shape[1] ** 0.5)
        if side * side != patches.shape[1]:
            raise ValueError(f"{patches.shape[1]} patch tokens are not a square grid")
        if not 1 <= grid <= side:
            raise ValueError(f"grid must be in 1..{side} for a {side} x {side} patch grid, got {grid}")
        cells = patches.reshape(len(patches), side, side, -1).permute(0, 3, 1, 2)
        pooled = F.adaptive_avg_pool2d(cells, grid)  # [B, D, grid, grid]
        return pooled.permute(0, 2, 3, 1).flatten(1)
    raise ValueError(f"probe feature must be 'mean', 'cls' or 'grid', got {kind!r}")


def probe_attribute(
    train_x: np.ndarray,
    train_y: Sequence[Any],
    test_x: np.ndarray,
    test_y: Sequence[Any],
    cfg: LinearProbeConfig | None = None,
    name: str = "attribute",
    outcomes: bool = False,
) -> dict[str, Any]:
    """Fit on train, score on test; rows labelled None are dropped. Test labels never seen in
    training count as errors (they are in the test set; the probe cannot predict them)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cfg = cfg or LinearProbeConfig()
    xtr, ytr = _rows_with_labels(np.asarray(train_x, dtype=np.float64), train_y, f"{name} (train)")
    xte, yte = _rows_with_labels(np.asarray(test_x, dtype=np.float64), test_y, f"{name} (test)")
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"{name}: train features have {xtr.shape[1]} dims, test {xte.shape[1]}")
    classes = sorted(set(ytr) | set(yte))
    if len(set(ytr)) < 2 or not yte:
        raise ProbeSkipped(
            f"{name}: needs >= 2 training classes and >= 1 test row, got {sorted(set(ytr))}, {len(yte)}"
        )
    if not (np.isfinite(xtr).all() and np.isfinite(xte).all()):
        raise ValueError(f"{name}: features contain NaN or inf")
    from threadpoolctl import threadpool_limits

    model = make_pipeline(StandardScaler(), LogisticRegression(C=cfg.C, max_iter=cfg.max_iter))
    # One BLAS thread: these problems are tiny, and on a busy 2-core machine a multi-threaded BLAS
    # was measured 40x slower (thread contention), for the same result.
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", category=UserWarning)  # convergence chatter on tiny sets
        model.fit(xtr, ytr)
        predicted = model.predict(xte)
    majority = collections.Counter(ytr).most_common(1)[0][0]
    correct = np.array([p == t for p, t in zip(predicted, yte, strict=True)], dtype=np.float64)
    result = {
        "accuracy": 100.0 * float(correct.mean()),
        "chance": 100.0 / len(classes),
        "majority": 100.0 * float(np.mean([t == majority for t in yte])),
        "n_train": len(ytr),
        "n_test": len(yte),
        "n_classes": len(classes),
    }
    if outcomes:
        result["_correct"] = correct
        result["_rows"] = _labelled(test_y)
    return result


def probe_attributes(
    train_x: np.ndarray,
    train_labels: dict[str, Sequence[Any]],
    test_x: np.ndarray,
    test_labels: dict[str, Sequence[Any]],
    cfg: LinearProbeConfig | None = None,
    outcomes: bool = False,
) -> dict[str, dict[str, Any]]:
    """`probe_attribute` for every attribute of `train_labels` (same keys expected in `test_labels`);
    an attribute the labels cannot support (`ProbeSkipped`) is {"skipped": reason}."""
    missing = sorted(set(train_labels) - set(test_labels))
    if missing:
        raise ValueError(f"test labels lack attributes {missing}")
    out: dict[str, dict[str, Any]] = {}
    for name in train_labels:
        try:
            out[name] = probe_attribute(
                train_x, train_labels[name], test_x, test_labels[name], cfg, name, outcomes
            )
        except ProbeSkipped as exc:
            out[name] = {"skipped": str(exc)}
    return out


def public(result: dict[str, Any]) -> dict[str, Any]:
    """A probe (or zero-shot) result without its per-case arrays (the underscored keys), for JSON."""
    return {
        name: {k: v for k, v in value.items() if not k.startswith("_")} if isinstance(value, dict) else value
        for name, value in result.items()
    }


def probe_by_feature(
    train_x: dict[str, np.ndarray],
    train_labels: dict[str, Sequence[Any]],
    test_x: dict[str, np.ndarray],
    test_labels: dict[str, Sequence[Any]],
    feature_of: dict[str, str],
    cfg: LinearProbeConfig | None = None,
    outcomes: bool = False,
) -> dict[str, dict[str, Any]]:
    """`probe_attributes` with each attribute on its own feature: `feature_of[attribute]` names the
    entry of `train_x` / `test_x` it is probed on (recorded as the result's "feature")."""
    out: dict[str, dict[str, Any]] = {}
    for kind in dict.fromkeys(feature_of[name] for name in train_labels):
        names = [name for name in train_labels if feature_of[name] == kind]
        results = probe_attributes(
            train_x[kind],
            {n: train_labels[n] for n in names},
            test_x[kind],
            {n: test_labels[n] for n in names},
            cfg,
            outcomes,
        )
        for name in names:
            out[name] = results[name] | {"feature": kind}
    return {name: out[name] for name in train_labels}
