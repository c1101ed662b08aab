from __future__ import annotations

import numpy as np
import pytest
import torch

from nas.evaluation.retrieval import chance_recall, recall_at_k, rerank_with_itm


def test_recall_by_hand():
    # 2 images, 3 texts: texts 0,1 belong to image 0, text 2 to image 1
    txt2img = np.array([0, 0, 1])
    i2t = np.array([[0.1, 0.9, 0.5], [0.8, 0.2, 0.3]])  # image 0: best text 1 (hit@1); image 1: text 2 is 2nd
    t2i = i2t.T.copy()  # text 0 -> image 1 first (miss@1), text 1 -> image 0, text 2 -> image 0 (miss@1)
    r = recall_at_k(i2t, t2i, txt2img, ks=(1, 2))
    assert r["i2t_r1"] == pytest.approx(50.0) and r["i2t_r2"] == pytest.approx(100.0)
    assert r["t2i_r1"] == pytest.approx(100 / 3) and r["t2i_r2"] == pytest.approx(100.0)


def test_ties_rank_by_index_and_nan_raises():
    txt2img = np.array([0, 1])
    flat = np.zeros((2, 2))
    r = recall_at_k(flat, flat, txt2img, ks=(1,))
    assert r["i2t_r1"] == 50.0 and r["t2i_r1"] == 50.0  # stable: index 0 wins every tie
    with pytest.raises(ValueError, match="NaN"):
        recall_at_k(np.array([[np.nan, 0], [0, 0]]), flat, txt2img)


def test_chance_levels():
    txt2img = np.repeat(np.arange(10), 2)  # 10 images x 2 captions
    c = chance_recall(txt2img, 1)
    assert c["t2i_r1"] == pytest.approx(10.0) and c["i2t_r1"] == pytest.approx(10.0)
    # Monte-Carlo check of the i2t formula with k = 5
    rng = np.random.default_rng(0)
    hits = [np.isin(rng.permutation(20)[:5], [0, 1]).any() for _ in range(20000)]
    assert chance_recall(txt2img, 5)["i2t_r5"] == pytest.approx(100 * np.mean(hits), abs=1.0)


def test_rerank_only_touches_topk():
    itc = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
    out = rerank_with_itm(itc, 2, lambda r, c: (10 * r + c).float())
    assert out[0].tolist() == pytest.approx([0.9 + 0, -100.0, 0.5 + 2])
    assert out[1].tolist() == pytest.approx([0.2 + 10, 0.3 + 11, -100.0])
