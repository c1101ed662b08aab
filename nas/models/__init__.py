"""nas.models: the registered models (`create_model(name, **overrides)`, nas.models.registry)."""

from __future__ import annotations

from typing import Any

__all__ = ["create_model"]


def __getattr__(name: str) -> Any:
    # Lazy (PEP 562): importing a model module must not go through the registry first.
    if name == "create_model":
        from nas.models.registry import create_model

        return create_model
    raise AttributeError(f"module 'nas.models' has no attribute {name!r}")
