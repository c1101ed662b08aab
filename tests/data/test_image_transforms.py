from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nas.config.base import ConfigError, from_dict
from nas.data.transforms import (
    ALBEF_MEAN,
    ALBEF_RANDAUG_OPS,
    ALBEF_STD,
    AlbefRandAugment,
    TransformConfig,
    build_eval_transform,
    build_train_transform,
)


def _noise_image(width: int = 50, height: int = 40) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


@pytest.mark.parametrize("build", [build_train_transform, build_eval_transform])
def test_output_is_a_plain_float_tensor_of_the_configured_size(build):
    out = build(TransformConfig(image_size=32, hflip=True))(_noise_image())
    assert type(out) is torch.Tensor
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32


def test_eval_transform_normalises_with_albef_constants():
    grey = Image.new("RGB", (20, 20), (128, 64, 255))
    out = build_eval_transform(TransformConfig(image_size=8))(grey)
    expected = [(v / 255 - m) / s for v, m, s in zip((128, 64, 255), ALBEF_MEAN, ALBEF_STD)]
    assert torch.allclose(out[:, 3, 3], torch.tensor(expected), atol=1e-5)
    assert torch.equal(out, build_eval_transform(TransformConfig(image_size=8))(grey))


def test_train_transform_is_random_but_reproducible_from_the_torch_seed():
    transform = build_train_transform(TransformConfig(image_size=24))
    image = _noise_image()
    torch.manual_seed(5)
    first = [transform(image) for _ in range(3)]
    torch.manual_seed(5)
    again = [transform(image) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], first[1])


def test_randaugment_has_albef_ops_and_no_colour_changing_ops():
    assert set(ALBEF_RANDAUG_OPS) == {
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
    }
    image = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    augment = AlbefRandAugment(2, 7)
    for op in ALBEF_RANDAUG_OPS:
        out = augment.apply(op, image)
        assert out.shape == image.shape and out.dtype == torch.uint8
    assert torch.equal(augment.apply("Identity", image), image)


def test_randaugment_magnitudes_hand_checked():
    flat = torch.full((3, 8, 8), 100, dtype=torch.uint8)
    # ALBEF: Brightness factor 0.1 + 1.8 * 7/10 = 1.36, so 100 -> 136
    assert (AlbefRandAugment(2, 7).apply("Brightness", flat) == 136).all()
    # Translation is 10/256 of the side times m/10: at side 64 and m = 8, exactly 2 px either way.
    column = torch.zeros((3, 64, 64), dtype=torch.uint8)
    column[:, :, 32] = 255
    for seed in range(4):
        torch.manual_seed(seed)
        moved = AlbefRandAugment(1, 8).apply("TranslateX", column)
        assert moved[0, 10].argmax().item() in (30, 34)
        assert moved[0, 10].max().item() == 255


def test_randaugment_requires_uint8():
    with pytest.raises(TypeError, match="uint8"):
        AlbefRandAugment()(torch.zeros(3, 4, 4))


def test_config_validation():
    with pytest.raises(ValueError, match="crop_scale"):
        TransformConfig(crop_scale=(0.9, 0.5))
    with pytest.raises(ValueError, match="randaugment_m"):
        TransformConfig(randaugment_m=11)
    with pytest.raises(ConfigError, match="transform.hflipp"):
        from_dict(TransformConfig, {"hflipp": True}, "transform")
    assert from_dict(TransformConfig, {"crop_scale": [0.2, 1.0]}).crop_scale == (0.2, 1.0)
    assert TransformConfig().hflip is False
