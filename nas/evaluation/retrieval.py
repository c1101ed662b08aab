"""Zero-shot image<->text retrieval (R@1/5/10), the protocol of ALBEF's `Retrieval.py`.

Every image may have several captions. Image->text: a hit at K if ANY of the image's captions is in
the top K texts. Text->image: a hit if the caption's own image is in the top K images.
Scores: ITC cosine for all pairs; with `k_test > 0`, ALBEF re-ranks each query's top-k candidates by
`ITM match logit + ITC score` (ALBEF adds the ITM score to the top-k similarities; the rest stay at
a floor so they rank below). Ties rank by index (stable sort), so results are deterministic. The ITM
logits of the candidate pairs are computed once per distinct pair (a pair that is a candidate in both
directions is scored once), in batches of `batch_size` pairs, each cut to its longest text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class RetrievalConfig:
    batch_size: int = 128
    k_test: int = 16  # ALBEF evaluates k_test = 256 on COCO/Flickr; 0 = ITC only
    ks: tuple[int, ...] = (1, 5, 10)
    # The first `max_images` distinct images of the split (in order of first appearance) and their
    # captions; None: all (COCO 5k test). Lets the probe split grow without growing retrieval's cost.
    max_images: int | None = None

    def __post_init__(self):
        if self.k_test < 0:
            raise ValueError("k_test must be >= 0")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"max_images must be >= 1 or null, got {self.max_images}")


def query_ranks(
    scores_i2t: np.ndarray, scores_t2i: np.ndarray, txt2img: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`(rank_i2t [N_img], rank_t2i [N_txt])`, 0 = top: per image the rank of its best-ranked caption,
    per text the rank of its own image. scores_i2t: [N_img, N_txt]; scores_t2i: [N_txt, N_img];
    txt2img[t] = image of t. Ties rank by index (stable sort)."""
    scores_i2t = np.asarray(scores_i2t, dtype=np.float64)
    scores_t2i = np.asarray(scores_t2i, dtype=np.float64)
    txt2img = np.asarray(txt2img)
    if np.isnan(scores_i2t).any() or np.isnan(scores_t2i).any():
        raise ValueError("retrieval scores contain NaN")
    n_img, n_txt = scores_i2t.shape
    if scores_t2i.shape != (n_txt, n_img) or txt2img.shape != (n_txt,):
        raise ValueError(
            f"shape mismatch: i2t {scores_i2t.shape}, t2i {scores_t2i.shape}, txt2img {txt2img.shape}"
        )
    # rank of the best-ranked correct text for every image (0 = top)
    order_i2t = np.argsort(-scores_i2t, axis=1, kind="stable")
    correct = txt2img[order_i2t] == np.arange(n_img)[:, None]
    if not correct.any(axis=1).all():
        missing = int(np.flatnonzero(~correct.any(axis=1))[0])
        raise ValueError(f"image {missing} has no caption in txt2img")
    rank_i2t = correct.argmax(axis=1)
    order_t2i = np.argsort(-scores_t2i, axis=1, kind="stable")
    rank_t2i = (order_t2i == txt2img[:, None]).argmax(axis=1)
    return rank_i2t, rank_t2i


def hits_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per query, 1.0 if it is a hit at K (its rank < K), else 0.0: the outcomes R@K averages."""
    return (np.asarray(ranks) < k).astype(np.float64)


def recall_from_ranks(
    rank_i2t: np.ndarray, rank_t2i: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """R@K in percent (the mean of `hits_at_k`) and the mean rank (1-based), from `query_ranks`."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_r{k}"] = 100.0 * float(hits_at_k(rank_i2t, k).mean())
        out[f"t2i_r{k}"] = 100.0 * float(hits_at_k(rank_t2i, k).mean())
    out["i2t_mean_rank"] = float(rank_i2t.mean() + 1)
    out["t2i_mean_rank"] = float(rank_t2i.mean() + 1)
    return out


def recall_at_k(
    scores_i2t: np.ndarray, scores_t2i: np.ndarray, txt2img: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """R@K in percent. scores_i2t: [N_img, N_txt]; scores_t2i: [N_txt, N_img]; txt2img[t] = image of t."""
    return recall_from_ranks(*query_ranks(scores_i2t, scores_t2i, txt2img), ks)


def chance_recall(txt2img: np.ndarray, k: int = 1) -> dict[str, float]:
    """Expected R@k (percent) of a scorer that ranks uniformly at random."""
    txt2img = np.asarray(txt2img)
    n_img, n_txt = int(txt2img.max()) + 1, len(txt2img)
    per_image = np.bincount(txt2img, minlength=n_img)
    # i2t: P(at least one of the c_i correct texts among the first k of n_txt) = 1 - C(n-c, k)/C(n, k)
    i2t = []
    for c in per_image:
        p_miss = 1.0
        for j in range(k):
            p_miss *= max(n_txt - c - j, 0) / (n_txt - j)
        i2t.append(1.0 - p_miss)
    return {f"i2t_r{k}": 100.0 * float(np.mean(i2t)), f"t2i_r{k}": 100.0 * min(k, n_img) / n_img}


@torch.no_grad()
def rerank_with_itm(
    itc: torch.Tensor, k: int, pair_score, *, floor: float = -100.0, row_offset: int = 0
) -> torch.Tensor:
    """ALBEF re-ranking: for each row keep the top-k ITC candidates, score them as
    `pair_score(row_indices, col_indices) + itc`, and put every other entry at `floor`.
    `itc` may be a slice of the query rows (one rank's share): `row_offset` is the global index of
    its first row, which `pair_score` receives. `pair_score` gets every candidate pair of the slice in
    one call (row-major), and batches its own forward passes."""
    if k <= 0:
        return itc.clone()
    k = min(k, itc.shape[1])
    out = torch.full_like(itc, floor)
    topk_sim, topk_idx = itc.topk(k, dim=1)
    rows = torch.arange(itc.shape[0]).repeat_interleave(k)
    cols = topk_idx.reshape(-1).cpu()
    scores = pair_score(rows + row_offset, cols).to(out.dtype).view(itc.shape[0], k)
    out.scatter_(1, topk_idx, scores + topk_sim)
    return out


@torch.no_grad()
def retrieval_scores(
    model,
    local_images: torch.Tensor,
    local_texts: list[str],
    *,
    n_images: int,
    n_texts: int,
    tokenizer,
    max_length: int,
    cfg: RetrievalConfig,
) -> dict[str, torch.Tensor]:
    """Score matrices of the whole split, from this rank's share of images and texts
    (`nas.evaluation.sharding.shard_slice`; everything in a single process).

    Each rank embeds its share; image tokens/features and text tokens/features/masks are gathered
    once each; ITC covers all pairs on every rank; ITM re-ranks this rank's share of the query rows
    (images for i2t, texts for t2i) and each re-ranked matrix is gathered once. Returns, on every
    rank: {"itc": [N_img, N_txt]} plus "i2t" [N_img, N_txt] and "t2i" [N_txt, N_img] when
    `cfg.k_test > 0`."""
    from nas.evaluation.encode import embed_images, embed_texts
    from nas.evaluation.sharding import gather_shards, shard_slice

    img_tokens, img_feat = embed_images(model, local_images, cfg.batch_size)
    img_tokens, img_feat = gather_shards(img_tokens, n_images), gather_shards(img_feat, n_images)
    txt = embed_texts(model, local_texts, tokenizer, max_length, cfg.batch_size)
    txt = {key: gather_shards(value, n_texts) for key, value in txt.items()}
    itc = img_feat @ txt["feat"].T  # [N_img, N_txt]
    out = {"itc": itc}
    if cfg.k_test <= 0:
        return out

    # ITM logit of each distinct (image, text) candidate pair, once for both directions: ITM image
    # tokens once per image, the pairs in batches of `cfg.batch_size` (nas.models.scoring).
    from nas.models.scoring import itm_functions, itm_pair_logits, text_lengths

    itm_tokens_of, pair_function = itm_functions(model)
    lengths = text_lengths(txt["attention_mask"])
    itm_tokens: dict[int, torch.Tensor] = {}
    logits: dict[tuple[int, int], float] = {}

    def itm_i2t(rows, cols):
        pairs = list(zip(rows.tolist(), cols.tolist()))
        todo = list(dict.fromkeys(pair for pair in pairs if pair not in logits))
        images = sorted({image for image, _ in todo} - set(itm_tokens))
        for start in range(0, len(images), cfg.batch_size):
            chunk = images[start : start + cfg.batch_size]
            tokens = img_tokens[chunk]
            itm_tokens.update(zip(chunk, tokens if itm_tokens_of is None else itm_tokens_of(tokens)))
        text_rows = {
            text: (txt["tokens"][text, : lengths[text]], None, txt["attention_mask"][text, : lengths[text]])
            for _, text in todo
        }
        scored = itm_pair_logits(
            pair_function,
            [itm_tokens[image] for image, _ in todo],
            [text_rows[text] for _, text in todo],
            cfg.batch_size,
        )
        logits.update(zip(todo, (float(value[1]) for value in scored)))
        return torch.tensor([logits[pair] for pair in pairs], dtype=torch.float64)

    def itm_t2i(rows, cols):
        return itm_i2t(cols, rows)

    mine_i, mine_t = shard_slice(n_images), shard_slice(n_texts)
    i2t = rerank_with_itm(itc[mine_i], cfg.k_test, itm_i2t, row_offset=mine_i.start)
    t2i = rerank_with_itm(itc.T[mine_t].contiguous(), cfg.k_test, itm_t2i, row_offset=mine_t.start)
    out["i2t"], out["t2i"] = gather_shards(i2t, n_images), gather_shards(t2i, n_texts)
    return out
