"""Reading pretrained weights from local files, and reporting what a load did.

Shared by the vision loader (DeiT/timm checkpoints) and the text loader (Hugging Face BERT). Nothing
here downloads: the project's machines are offline (ENVIRONMENT.md), so a missing file is an error
that says which parameter to set and what file to provide.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# The file names a Hugging Face / timm model folder holds, in the order we prefer them.
FOLDER_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pt", "model.pth")
# Wrappers that training scripts put around a state dict (DeiT and ALBEF save {"model": ...}).
_WRAPPER_KEYS = ("model", "state_dict", "module")


class PretrainedWeightsError(FileNotFoundError):
    """Pretrained weights are unavailable or do not fit; the message says what to provide."""


@dataclass
class LoadReport:
    """What a checkpoint load did; `str()` gives a short readable summary."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model params the checkpoint did not provide
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys nobody uses
    resampled: list[str] = field(default_factory=list)  # position embeddings resized to the grid

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors from {self.source}"]
        for name, keys in (
            ("missing (left at init)", self.missing),
            ("unexpected (ignored)", self.unexpected),
            ("resampled", self.resampled),
        ):
            if keys:
                lines.append(f"  {name}: {len(keys)}: {_abbreviate(keys)}")
        return "\n".join(lines)


def _abbreviate(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def resolve_weight_file(path: str | Path, *, param: str, expected: str) -> Path:
    """The weight file at `path` (a file, or a folder holding one of FOLDER_WEIGHT_FILES).

    `param` is the config key the user set (e.g. "text.pretrained") and `expected` describes what
    belongs there; both go into the error message.
    """
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        for name in FOLDER_WEIGHT_FILES:
            if (p / name).is_file():
                return p / name
        raise PretrainedWeightsError(
            f"{param}={str(path)!r} is a folder without weights: expected one of {list(FOLDER_WEIGHT_FILES)} "
            f"in it ({expected})"
        )
    raise PretrainedWeightsError(f"{param}={str(path)!r} does not exist: set {param} to {expected}")


def read_state_dict(path: str | Path, *, param: str, expected: str) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file or model folder, unwrapped from {"model": ...}-style containers."""
    file = resolve_weight_file(path, param=param, expected=expected)
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file), device="cpu")
    else:
        try:
            # weights_only: never execute pickled code from a downloaded checkpoint.
            state = torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise PretrainedWeightsError(
                f"{param}: {file} holds Python objects besides tensors and cannot be read safely; "
                f"re-save only its state dict (torch.save(ckpt['model'], ...)). Cause: {exc}"
            ) from exc
    while isinstance(state, dict):
        wrapper = next((k for k in _WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if wrapper is None:
            break
        state = state[wrapper]
    if not isinstance(state, dict) or not state:
        raise PretrainedWeightsError(f"{param}: {file} holds no state dict of tensors")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise PretrainedWeightsError(f"{param}: {file} holds no tensors")
    return tensors


def load_checked(
    module: torch.nn.Module, state: dict[str, torch.Tensor], report: LoadReport, *, param: str
) -> LoadReport:
    """Copy `state` into `module`; a shape mismatch is an error naming the parameter.

    Fills `report.loaded` and `report.missing` (the module's keys absent from `state`); keys of
    `state` the module lacks must already be filtered out (and listed in `report.unexpected`).
    """
    own = module.state_dict()
    for key, value in state.items():
        if key not in own:
            raise KeyError(f"{param}: internal mapping produced unknown key {key!r}")
        if own[key].shape != value.shape:
            raise PretrainedWeightsError(
                f"{param}: parameter {key!r} has shape {tuple(value.shape)} in {report.source} but "
                f"{tuple(own[key].shape)} in the model (check the width/size settings of the config)"
            )
    result = module.load_state_dict(state, strict=False)
    report.loaded = sorted(state)
    report.missing = sorted(result.missing_keys)
    logger.info("%s", report)
    return report
