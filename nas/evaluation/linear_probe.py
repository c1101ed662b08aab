"""Linear probes on frozen image features, one per scene attribute (MUG_UTA.md §1, §2).

A probe is scikit-learn's multinomial logistic regression on standardised features (the usual
linear-evaluation protocol on frozen encoders, with L-BFGS instead of MUG's LARS: at these sizes the
problem is small and convex, and L-BFGS converges deterministically). Accuracy is in percent, next
to the chance level (1 / classes) and the majority-class rate, so a probe that learned nothing is
visible as such.
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
    keep = [i for i, label in enumerate(labels) if label is not None]
    return x[keep], [str(labels[i]) for i in keep]


def probe_attribute(
    train_x: np.ndarray,
    train_y: Sequence[Any],
    test_x: np.ndarray,
    test_y: Sequence[Any],
    cfg: LinearProbeConfig | None = None,
    name: str = "attribute",
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
        raise ValueError(
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
    return {
        "accuracy": 100.0 * float(np.mean([p == t for p, t in zip(predicted, yte, strict=True)])),
        "chance": 100.0 / len(classes),
        "majority": 100.0 * float(np.mean([t == majority for t in yte])),
        "n_train": len(ytr),
        "n_test": len(yte),
        "n_classes": len(classes),
    }


def probe_attributes(
    train_x: np.ndarray,
    train_labels: dict[str, Sequence[Any]],
    test_x: np.ndarray,
    test_labels: dict[str, Sequence[Any]],
    cfg: LinearProbeConfig | None = None,
) -> dict[str, dict[str, Any]]:
    """`probe_attribute` for every attribute of `train_labels` (same keys expected in `test_labels`)."""
    missing = sorted(set(train_labels) - set(test_labels))
    if missing:
        raise ValueError(f"test labels lack attributes {missing}")
    return {
        name: probe_attribute(train_x, train_labels[name], test_x, test_labels[name], cfg, name)
        for name in train_labels
    }
