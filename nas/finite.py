"""Non-finite values where training draws from them: one error type the engine turns into a stop that
names the tensor, the step and the epoch (the loss check alone is bypassed when, say, exploding weights
first make a sampling distribution NaN: `torch.multinomial` would fail without naming anything)."""

from __future__ import annotations

import torch


class NonFiniteTensorError(FloatingPointError):
    """`name` (a tensor a training step computed) holds NaN or inf."""

    def __init__(self, name: str, detail: str = "") -> None:
        self.name, self.detail = name, detail
        super().__init__(f"{name} is not finite{': ' + detail if detail else ''}")


def check_finite(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """`tensor` unchanged, or NonFiniteTensorError naming it (one host sync; call on small tensors)."""
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise NonFiniteTensorError(name, f"{bad} of {tensor.numel()} values are NaN or inf")
    return tensor
