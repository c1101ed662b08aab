"""Image transforms: ALBEF's pretraining augmentation (random resized crop, optional flip,
RandAugment without colour ops) and its evaluation resize, both ending in ALBEF's normalisation.

ALBEF (salesforce/ALBEF, dataset/__init__.py `create_dataset`; ops in dataset/randaugment.py):
pretraining RandomResizedCrop(256, scale=(0.2, 1.0), bicubic) + RandomHorizontalFlip +
RandomAugment(2, 7, ops listed below) + ToTensor + Normalize; evaluation Resize((res, res),
bicubic) + ToTensor + Normalize.

Randomness comes from the torch RNG (as in torchvision's own transforms), so DataLoader workers
are seeded by torch and a run is reproducible from its torch seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

# torch and torchvision are imported where an image is transformed, not here: reading TransformConfig
# (nas.config.data, every stage's params check) then costs no torchvision import, which takes about a
# second (it pulls in torch._dynamo and sympy through torchvision.ops).
if TYPE_CHECKING:
    import torch

# TransformConfig and ALBEF's normalisation constants are pure config, in nas.config.data (kept
# importable from here).
from nas.config.data import ALBEF_MEAN, ALBEF_STD, RANDAUGMENT_MAX_LEVEL, TransformConfig

__all__ = ["ALBEF_MEAN", "ALBEF_STD", "TransformConfig", "build_eval_transform", "build_train_transform"]

# ALBEF's RandomAugment op list for pretraining (salesforce/ALBEF, dataset/__init__.py). It has no
# Color/Contrast/Solarize/Posterize ops; we keep it that way because our captions name colours.
ALBEF_RANDAUG_OPS = (
    "Identity",
    "AutoContrast",
    "Equalize",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
)
# Constants of ALBEF's dataset/randaugment.py: levels run to 10; each sampled op is applied with
# probability 0.5; geometric ops fill with grey 128; translation is 10 px at its 256 px input.
_MAX_LEVEL = RANDAUGMENT_MAX_LEVEL
_APPLY_PROB = 0.5
_FILL = [128.0, 128.0, 128.0]
_TRANSLATE_FRACTION = 10 / 256


class AlbefRandAugment:
    """ALBEF's RandomAugment on uint8 image tensors [..., 3, H, W].

    `n` ops are drawn uniformly with replacement from ALBEF_RANDAUG_OPS; each is applied with
    probability 0.5 at magnitude `m` (of 10): Brightness/Sharpness factor 0.1 + 1.8 m/10, shear
    factor 0.3 m/10, rotation 30 m/10 degrees, translation (10/256 of the side) * m/10, each
    geometric op with a random sign. Two departures from ALBEF's cv2 code, both so the op
    means the same at any resolution: translation is scaled to the image side (ALBEF: 10 px
    absolute at 256 px), and shear is about the image centre (ALBEF: the top-left corner).
    """

    def __init__(self, n: int = 2, m: int = 7):
        self.n = n
        self.m = m

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n}, m={self.m})"

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        import torch

        if image.dtype != torch.uint8:
            raise TypeError(f"AlbefRandAugment expects a uint8 image tensor, got {image.dtype}")
        for _ in range(self.n):
            op = ALBEF_RANDAUG_OPS[int(torch.randint(len(ALBEF_RANDAUG_OPS), ()))]
            if float(torch.rand(())) > _APPLY_PROB:
                continue
            image = self.apply(op, image)
        return image

    def apply(self, op: str, image: torch.Tensor) -> torch.Tensor:
        """Apply one named op at this instance's magnitude (random sign drawn from torch)."""
        import torch
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        level = self.m / _MAX_LEVEL
        sign = -1.0 if float(torch.rand(())) < 0.5 else 1.0
        side = image.shape[-1]
        if op == "Identity":
            return image
        if op == "AutoContrast":
            return TF.autocontrast(image)
        if op == "Equalize":
            return TF.equalize(image)
        if op == "Brightness":
            return TF.adjust_brightness(image, 0.1 + 1.8 * level)
        if op == "Sharpness":
            return TF.adjust_sharpness(image, 0.1 + 1.8 * level)
        if op in ("ShearX", "ShearY"):
            degrees = sign * math.degrees(math.atan(0.3 * level))  # shear factor -> angle
            shear = [degrees, 0.0] if op == "ShearX" else [0.0, degrees]
            return self._affine(image, angle=0.0, translate=[0.0, 0.0], shear=shear)
        if op in ("TranslateX", "TranslateY"):
            pixels = sign * _TRANSLATE_FRACTION * side * level
            translate = [pixels, 0.0] if op == "TranslateX" else [0.0, pixels]
            return self._affine(image, angle=0.0, translate=translate, shear=[0.0, 0.0])
        if op == "Rotate":
            return TF.rotate(image, sign * 30.0 * level, interpolation=InterpolationMode.BILINEAR, fill=_FILL)
        raise ValueError(f"unknown RandAugment op {op!r}; expected one of {ALBEF_RANDAUG_OPS}")

    @staticmethod
    def _affine(
        image: torch.Tensor, *, angle: float, translate: list[float], shear: list[float]
    ) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        return TF.affine(
            image,
            angle=angle,
            translate=translate,
            scale=1.0,
            shear=shear,
            interpolation=InterpolationMode.BILINEAR,
            fill=_FILL,
        )


def build_train_transform(cfg: TransformConfig) -> Callable:
    """PIL image -> normalised float32 tensor [3, S, S] with ALBEF's pretraining augmentation."""
    import torch
    from torchvision.transforms import InterpolationMode, v2

    steps: list[Callable] = [
        v2.ToImage(),
        v2.RandomResizedCrop(
            (cfg.image_size, cfg.image_size),
            scale=cfg.crop_scale,
            interpolation=InterpolationMode.BICUBIC,
            antialias=True,
        ),
    ]
    if cfg.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if cfg.randaugment and cfg.randaugment_n > 0:
        steps.append(AlbefRandAugment(cfg.randaugment_n, cfg.randaugment_m))
    # ToPureTensor: a plain torch.Tensor, not a tv_tensors.Image subclass, reaches the model.
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(cfg.mean), list(cfg.std)),
        v2.ToPureTensor(),
    ]
    return v2.Compose(steps)


def build_eval_transform(cfg: TransformConfig) -> Callable:
    """PIL image -> normalised float32 tensor [3, S, S]: bicubic resize, no randomness."""
    import torch
    from torchvision.transforms import InterpolationMode, v2

    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(
                (cfg.image_size, cfg.image_size), interpolation=InterpolationMode.BICUBIC, antialias=True
            ),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(cfg.mean), list(cfg.std)),
            v2.ToPureTensor(),
        ]
    )
