"""A figure that shows what "token level" means in NVA (spec NAS_METHOD.md §4).

One row per image: the image; its visual-dictionary code map over the patch grid (one colour per code);
and the image with the patches one NVA draw replaced highlighted (the set M of patches sharing the
anchor's code, the anchor outlined), titled with the code swap h_a → c. Rendered with matplotlib's
object API and the Agg canvas (no display, no pyplot global state).

A model without NVA (the `vd` ablation: VD on the ITM path, no NVA in any stage) never draws a negative,
so its figure has the first two columns only and says so in its title ("VD codes (no NVA in this
variant)"). The title and a one-line caption are also written into the PNG's text chunks ("Title",
"Description"), where the report reads them (`figure_caption`).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.colors import ListedColormap, hsv_to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from nas.models.nas_model import NAS, eval_mode
from nas.reporting.atomic import save_figure

# Colour of code j: hue j·φ⁻¹ (mod 1), so neighbouring code ids get far-apart hues for any K.
_GOLDEN = (math.sqrt(5) - 1) / 2
_REPLACED_RGBA = (1.0, 0.1, 0.1, 0.55)

TITLE_NVA = "What NVA changes (one NVA draw per image)"
TITLE_NO_NVA = "VD codes (no NVA in this variant)"
CAPTION_NVA = (
    "Each row: a test image, its visual-dictionary code map over the patch grid, and the patches one NVA "
    "draw replaced (all patches sharing the anchor's code move to one nearby code; every other token is "
    "bitwise unchanged)."
)
CAPTION_NO_NVA = (
    "Each row: a test image and its visual-dictionary code map over the patch grid. This variant has the "
    "dictionary on the ITM path but no NVA (no negative image is ever drawn), so there is no NVA panel."
)


def code_colours(num_codes: int) -> ListedColormap:
    """One distinct-looking colour per code index."""
    hues = (np.arange(num_codes) * _GOLDEN) % 1.0
    hsv = np.stack([hues, np.full(num_codes, 0.75), np.full(num_codes, 0.95)], axis=1)
    return ListedColormap(hsv_to_rgb(hsv), name="vd_codes")


def _displayable(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] normalised image -> [H, W, 3] in [0, 1] (min-max per image: the figure shows layout,
    not calibrated colour)."""
    array = image.detach().float().cpu()
    low, high = array.min(), array.max()
    array = (array - low) / (high - low) if high > low else torch.zeros_like(array)
    return array.permute(1, 2, 0).numpy()


@torch.no_grad()
def nva_figure(
    model: NAS,
    images: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    path: str | Path,
    *,
    captions: Sequence[str] | None = None,
    seed: int = 0,
    max_images: int = 4,
    show_nva: bool | None = None,
) -> Path:
    """Draw images [N, 3, H, W] with their tokenized texts [N, T]: image, code map, one NVA draw (from a
    generator seeded with `seed`); at most `max_images` rows. Writes a PNG to `path` and returns it.
    `show_nva` (default: the model's `cfg.nva_enabled`) False drops the NVA column and titles the
    figure `TITLE_NO_NVA`. The model is used in eval mode (nothing is updated) and left in the mode it
    was in."""
    if show_nva is None:
        show_nva = bool(model.cfg.nva_enabled)
    if images.dim() != 4 or input_ids.shape[0] != images.shape[0] or attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"nva_figure: images must be [N, 3, H, W] with input_ids and attention_mask [N, T]; got "
            f"{tuple(images.shape)}, {tuple(input_ids.shape)}, {tuple(attention_mask.shape)}"
        )
    count = min(max_images, images.shape[0])
    if count < 1:
        raise ValueError("nva_figure: no images to draw")
    if captions is not None and len(captions) < count:
        raise ValueError(f"nva_figure: {count} images but only {len(captions)} captions")
    images, input_ids, attention_mask = images[:count], input_ids[:count], attention_mask[:count]

    with eval_mode(model):
        image_tokens, _ = model.encode_image(images)
        text_tokens, _ = model.encode_text(input_ids, attention_mask)
        positive = model.vd(image_tokens)
        negative = None
        if show_nva:
            generator = torch.Generator(device=image_tokens.device).manual_seed(seed)
            negative = model.negative_images(positive, image_tokens, text_tokens[:, 0], generator)

    side = math.isqrt(positive.codes.shape[1])
    codes = positive.codes.reshape(count, side, side).cpu().numpy()
    colours = code_colours(model.vd.codebook.shape[0])

    columns = 3 if negative is not None else 2
    figure = Figure(figsize=(3 * columns, 3 * count), layout="constrained")
    figure.suptitle(TITLE_NVA if negative is not None else TITLE_NO_NVA, fontsize=11)
    axes = figure.subplots(count, columns, squeeze=False)
    for row in range(count):
        picture = _displayable(images[row])
        height, width = picture.shape[:2]
        extent = (-0.5, width - 0.5, height - 0.5, -0.5)  # grid cells cover the image's pixels

        image_axis, code_axis = axes[row][:2]
        image_axis.imshow(picture)
        caption = textwrap.fill(captions[row], 40) if captions is not None else f"image {row}"
        image_axis.set_title(caption, fontsize=9)
        code_axis.imshow(
            codes[row], cmap=colours, vmin=-0.5, vmax=colours.N - 0.5, interpolation="nearest", extent=extent
        )
        code_axis.set_title(f"VD codes ({len(np.unique(codes[row]))} distinct)", fontsize=9)
        for axis in axes[row]:
            axis.set_xticks([])
            axis.set_yticks([])
        if negative is None:
            continue

        nva_axis = axes[row][2]
        anchor, anchor_code, code = (
            int(t[row]) for t in (negative.anchor, negative.anchor_code, negative.code)
        )
        replaced = negative.replaced[row].reshape(side, side).cpu().numpy()
        overlay = np.zeros((side, side, 4))
        overlay[replaced] = _REPLACED_RGBA
        nva_axis.imshow(picture)
        nva_axis.imshow(overlay, interpolation="nearest", extent=extent)
        cell_h, cell_w = height / side, width / side
        anchor_row, anchor_col = divmod(anchor, side)
        nva_axis.add_patch(
            Rectangle(
                (anchor_col * cell_w - 0.5, anchor_row * cell_h - 0.5),
                cell_w,
                cell_h,
                fill=False,
                edgecolor="yellow",
                linewidth=2,
            )
        )
        nva_axis.set_title(f"NVA: code {anchor_code} → {code} in {int(replaced.sum())} patch(es)", fontsize=9)

    metadata = {
        "Title": TITLE_NVA if negative is not None else TITLE_NO_NVA,
        "Description": CAPTION_NVA if negative is not None else CAPTION_NO_NVA,
    }
    return save_figure(figure, path, dpi=100, metadata=metadata)


def figure_caption(path: str | Path) -> tuple[str, str] | None:
    """(title, caption) that `nva_figure` wrote into the PNG at `path`; None for a PNG without them (one
    drawn before the figure carried its title)."""
    from PIL import Image

    with Image.open(path) as image:
        text = getattr(image, "text", {}) or {}
    if "Title" not in text:
        return None
    return text["Title"], text.get("Description", "")
