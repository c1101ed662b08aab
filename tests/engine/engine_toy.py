"""A tiny model with ALBEF's training hazards, and data for it (importable by spawned workers).

Hazards, as in ALBEF: a momentum copy updated inside forward, a feature queue with a pointer filled
from `nas.distributed.all_gather_cat` of the momentum features, random ops inside forward (noise,
standing in for MLM masking / ITM negative sampling) and dropout, a LayerNorm and biases (no weight
decay), and α-weighted distillation (α is a step input, as ALBEF's: `toy_step_inputs` is the engine's
hook that ramps it 0 -> 0.4 over the first epoch; without the hook the toy is called `model(batch)` and
distils nothing). Every loss is a mean over independent samples, so N processes on 1/N of a batch
compute the same as one process on the whole batch when the randomness is off.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nas.config.distillation import DistillationConfig
from nas.distributed import all_gather_cat

IN_DIM = 6
# ALBEF's distillation as the toy's step input (a module attribute: spawned workers resolve it by name).
TOY_DISTILLATION = DistillationConfig(alpha=0.4, ramp=True)
toy_step_inputs = TOY_DISTILLATION.step_inputs


class ToyMomentumModel(nn.Module):
    def __init__(
        self,
        *,
        hidden: int = 8,
        embed: int = 4,
        queue_size: int = 10,
        momentum: float = 0.5,
        dropout: float = 0.2,
        noise: float = 0.1,
        nan_at_call: int | None = None,
    ) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(IN_DIM, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, embed),
        )
        self.encoder_m = copy.deepcopy(self.encoder).requires_grad_(False)
        self.head = nn.Linear(embed, 1)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, embed), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.momentum, self.noise, self.nan_at_call = momentum, noise, nan_at_call
        self.calls = 0

    @torch.no_grad()
    def _momentum_update(self) -> None:
        for p, p_m in zip(self.encoder.parameters(), self.encoder_m.parameters()):
            p_m.mul_(self.momentum).add_(p.detach(), alpha=1 - self.momentum)

    @torch.no_grad()
    def _enqueue(self, feats: torch.Tensor) -> None:
        feats = all_gather_cat(feats)
        size = self.queue.shape[0]
        assert feats.shape[0] <= size, "toy queue shorter than a global batch"
        rows = (self.queue_ptr + torch.arange(feats.shape[0], device=feats.device)) % size
        self.queue[rows] = feats.to(self.queue.dtype)  # features may be bf16 under autocast
        self.queue_ptr.copy_((self.queue_ptr + feats.shape[0]) % size)

    def forward(self, batch: dict, *, alpha: float = 0.0) -> dict[str, torch.Tensor]:
        self.calls += 1
        x, target = batch["image"], batch["target"]
        if self.noise:
            x = x + self.noise * torch.randn_like(x)
        feat = F.normalize(self.encoder(x), dim=1)
        with torch.no_grad():
            self._momentum_update()
            feat_m = F.normalize(self.encoder_m(x), dim=1)
        fit = F.mse_loss(self.head(feat).squeeze(1), target)
        queue = torch.logsumexp(feat @ self.queue.clone().t() / 0.5, dim=1).mean()  # ALBEF clones too
        distill = ((feat - feat_m) ** 2).sum(dim=1).mean()
        self._enqueue(feat_m)
        if self.nan_at_call is not None and self.calls == self.nan_at_call:
            queue = queue * float("nan")
        return {"fit": fit, "queue": 0.1 * queue, "distill": alpha * distill}


class ToyDataset(Dataset):
    def __init__(self, size: int = 16, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(size, IN_DIM, generator=generator)
        self.y = self.x.sum(dim=1).tanh()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "target": self.y[i]}


def collate(items: list[dict]) -> dict:
    return {
        "image": torch.stack([it["image"] for it in items]),
        "target": torch.stack([it["target"] for it in items]),
        "num_skipped": 1,  # pretend the collate dropped one bad image per batch
    }


def make_loader(size: int = 16, batch_size: int = 4) -> DataLoader:
    return DataLoader(
        ToyDataset(size), batch_size=batch_size, shuffle=True, drop_last=True, collate_fn=collate
    )


# Factories for the parity harness (no randomness inside forward, so 1 and N processes must agree).
def parity_model() -> ToyMomentumModel:
    return ToyMomentumModel(dropout=0.0, noise=0.0, queue_size=12)


def parity_batch(step: int) -> dict:
    generator = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(8, IN_DIM, generator=generator)
    return {"image": x, "target": x.sum(dim=1).tanh(), "num_skipped": 2}
