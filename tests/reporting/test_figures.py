"""The report's figures, inspected as matplotlib objects: loss curves (a y-label on every panel, one colour
per variant in every panel and stage, one legend, the ITM label-prior lines), the NVA figure's title for a
variant without NVA, and the UTA masking figure's "no masking" row."""

from __future__ import annotations

import math

import pytest
import torch
from matplotlib.collections import LineCollection
from matplotlib.colors import to_hex
from matplotlib.image import imread
from PIL import Image

from nas.models.registry import create_model
from nas.reporting.nva_figure import TITLE_NO_NVA, TITLE_NVA, figure_caption, nva_figure
from nas.reporting.results import (
    itm_prior,
    label_entropy,
    loss_curve_figure,
    loss_curve_plot,
    nva_figure_caption,
    variant_colours,
)
from nas.reporting.uta_section import masking_figure

VARIANTS = ("albef", "vd", "nas")
TERMS = ("itc", "itm", "mlm", "total")


def _run(variant: str, stage: int, steps: int = 4) -> dict:
    shift = VARIANTS.index(variant) * 0.01 + stage
    rows = []
    for step in range(1, steps + 1):
        row = {"step": 5 * step, "lr": 1e-4, "alpha": 0.0, "images": 64.0, "skipped": 0.0}
        row.update({t: 1.0 / step + shift for t in TERMS})
        row["captions_truncated_words"] = 0.0  # a data diagnostic, not a loss: no panel
        rows.append(row)
    return {"steps": rows}


def _stages(same_stage1: bool = False) -> tuple[dict, dict]:
    stage1 = {v: _run(v, 0) for v in VARIANTS}
    if same_stage1:
        stage1["nas"] = _run("vd", 0)
    return stage1, {v: _run(v, 1) for v in VARIANTS}


def _curves(axis) -> list:
    return [line for line in axis.get_lines() if line.get_gid()]


def _priors(axis) -> list[tuple[float, float, float]]:
    """(y, x from, x to) of the ITM prior segments of a panel."""
    out = []
    for collection in axis.collections:
        if isinstance(collection, LineCollection) and collection.get_gid() == "itm_prior":
            for segment in collection.get_segments():
                (x0, y0), (x1, _) = segment
                out.append((float(y0), float(x0), float(x1)))
    return sorted(out)


def test_label_prior_entropies():
    assert itm_prior(3) == pytest.approx(label_entropy(1 / 3)) == pytest.approx(0.6365, abs=5e-5)
    assert itm_prior(4) == pytest.approx(0.5623, abs=5e-5)
    assert itm_prior(2) == pytest.approx(math.log(2))
    with pytest.raises(ValueError):
        label_entropy(1.0)


def test_every_panel_has_a_ylabel_and_the_figure_one_legend():
    figure = loss_curve_plot(*_stages())
    panels = [axis for axis in figure.axes if axis.axison]
    assert [axis.get_title().split(":")[0].split(" ")[0] for axis in panels] == ["ITC", "ITM", "MLM", "total"]
    for axis in panels:
        assert axis.get_ylabel().strip(), axis.get_title()
        assert "nats" in axis.get_ylabel()
        assert axis.get_xlabel().strip()
        assert axis.get_legend() is None
    assert len(figure.legends) == 1
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert labels[:3] == list(VARIANTS)


def test_one_colour_per_variant_in_every_panel_and_stage():
    figure = loss_curve_plot(*_stages())
    colours = variant_colours(VARIANTS)
    assert len(set(colours.values())) == len(VARIANTS)
    seen: dict[str, set[str]] = {}
    panels = [axis for axis in figure.axes if axis.axison]
    for axis in panels:
        curves = _curves(axis)
        assert {line.get_gid() for line in curves} == {
            f"{v}/{s}" for v in VARIANTS for s in ("stage 1", "stage 2")
        }
        for line in curves:
            seen.setdefault(line.get_gid().split("/")[0], set()).add(to_hex(line.get_color()))
    assert {v: next(iter(c)) for v, c in seen.items()} == {v: to_hex(colours[v]) for v in VARIANTS}
    assert all(len(c) == 1 for c in seen.values())
    # The same variant keeps its colour whatever other variants are plotted.
    assert variant_colours(["nas", "extra"])["nas"] != variant_colours(["nas", "extra"])["extra"]
    assert variant_colours(["nas", "vd", "albef"]) == colours


def test_itm_prior_lines_per_stage():
    stage1, stage2 = _stages()
    figure = loss_curve_plot(stage1, stage2)
    (itm,) = [axis for axis in figure.axes if axis.get_title().startswith("ITM")]
    stage1_end = 20.0  # last logged step of stage 1; stage 2 continues from there
    # NVA variants unknown: stage 1 has the 3-row prior; stage 2 both row sets.
    assert _priors(itm) == [
        pytest.approx((itm_prior(4), stage1_end, stage1_end + 20.0)),
        pytest.approx((itm_prior(3), 0.0, stage1_end)),
        pytest.approx((itm_prior(3), stage1_end, stage1_end + 20.0)),
    ]
    # Told which variants run NVA: only the row sets that occur.
    figure = loss_curve_plot(stage1, stage2, nva_variants=set())
    (itm,) = [axis for axis in figure.axes if axis.get_title().startswith("ITM")]
    assert [round(y, 4) for y, _, _ in _priors(itm)] == [0.6365, 0.6365]
    figure = loss_curve_plot(stage1, stage2, nva_variants={"nas"})
    (itm,) = [axis for axis in figure.axes if axis.get_title().startswith("ITM")]
    assert [round(y, 4) for y, _, _ in _priors(itm)] == [0.5623, 0.6365, 0.6365]
    texts = " ".join(t.get_text() for t in itm.texts)
    assert "H(1/4) = 0.5623" in texts and "H(1/3) = 0.6365" in texts and "nas" in texts
    # No other panel carries a prior line.
    assert all(not _priors(axis) for axis in figure.axes if axis is not itm)


def test_identical_stage_curves_are_named_in_the_legend(tmp_path):
    figure = loss_curve_plot(*_stages(same_stage1=True))
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert "nas (stage 1 identical to vd)" in labels
    path = loss_curve_figure(*_stages(), tmp_path / "loss_curves.png")
    assert imread(path).shape[0] > 100


# ---- NVA figure --------------------------------------------------------------------------------------

SMALL = {
    "vision": {"img_size": 32, "depth": 1},
    "text": {"vocab_size": 1000, "num_text_layers": 1, "num_fusion_layers": 1},
    "vd": {"num_codes": 16},
    "queue_size": 64,
}


def _inputs(count: int = 2):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(200, 1000, (count, 6), generator=generator)
    ids[:, 0] = 101
    return torch.randn(count, 3, 32, 32, generator=generator), ids, torch.ones(count, 6, dtype=torch.long)


@pytest.mark.parametrize("nva", [False, True])
def test_nva_figure_is_titled_by_what_it_shows(tmp_path, nva):
    torch.manual_seed(0)
    model = create_model("nas_tiny", nva_enabled=nva, **SMALL)
    path = nva_figure(model, *_inputs(), tmp_path / "nva.png", max_images=2)
    title, caption = figure_caption(path)
    with Image.open(path) as image:
        width, height = image.size
    if nva:
        assert title == TITLE_NVA and "NVA draw replaced" in caption
        assert (width, height) == (900, 600)  # image, codes, NVA draw
    else:
        assert title == TITLE_NO_NVA == "VD codes (no NVA in this variant)"
        assert "no NVA" in caption and "What NVA changes" not in title
        assert (width, height) == (600, 600)  # image, codes: no NVA panel
    assert nva_figure_caption(path) == (title, caption)


def test_nva_caption_of_an_older_png_falls_back(tmp_path):
    path = tmp_path / "old.png"
    Image.new("RGB", (4, 4)).save(path)
    assert figure_caption(path) is None
    assert nva_figure_caption(path)[0] == "What NVA changes"


# ---- UTA masking figure ------------------------------------------------------------------------------


def test_uta_no_masking_row_shows_one_all_visible_grid():
    everything = list(range(4))
    data = {
        "grid": [2, 2],
        "heatmaps": {"none": [[0.9, 0.8], [0.7, 0.6]], "random": [[0.5, 0.6], [0.7, 0.8]]},
        "visibility": {"none": [[1.0, 1.0], [1.0, 1.0]], "random": [[0.5, 0.5], [0.5, 0.5]]},
        "example_masks": {"none": [everything, everything], "random": [[0, 3], [1, 2]]},
    }
    figure = masking_figure(data)
    panels = [axis for axis in figure.axes if axis.get_label() != "<colorbar>"]
    none_row, random_row = panels[:4], panels[4:8]
    assert none_row[1].get_title().startswith("every patch visible")
    assert [axis.axison for axis in none_row] == [True, True, False, False]
    assert [axis.axison for axis in random_row] == [True, True, True, True]
    assert random_row[1].get_title() == "P(visible)" and random_row[2].get_title().startswith("mask 1")
    assert "every patch is visible" in figure.get_suptitle()
