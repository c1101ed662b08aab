"""nas-harness: a reproducibility harness for NAS (AAAI 2025), with ALBEF, MUG and UTA.

The library is importable without Sacred, DVC or a GPU; `experiments/` holds the Sacred stages.
The inference API (open_clip / LAVIS style) is at the top level, imported on first use so that
`import nas` stays light (no torch):

    model, preprocess, tokenizer = nas.create_model_and_transforms("runs/finetune/nas/seed0")
    scores = model.score(torch.stack([preprocess(im) for im in images]), tokenizer(texts))
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it (PEP 562: resolved on first attribute access)
_LAZY = {
    "create_model_and_transforms": "nas.inference",
    "export_inference_weights": "nas.inference",
    "create_model": "nas.models.registry",
    "list_models": "nas.models.registry",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nas' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
