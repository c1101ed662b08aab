"""Caption generation (greedy and beam search) and the per-attribute exact match of generated
captions against the synthetic scene ground truth (MUG_UTA.md §1, "What the CPU-scale reproduction
must show", item 3).

Generation is model-agnostic: it needs `next_logits(prefix [b, t], rows [b]) -> [b, V]`, the logits of
the next token after each prefix, `rows` naming which images of the batch the prefixes belong to.
Every sequence starts with SOT; a sequence ends at EOT or when it holds `max_length` tokens (SOT and
EOT included), whichever comes first.

Exact match. The synthetic captions name each object as "[det] size colour shape" and join two
objects with a relation phrase ("left of", "to the left of", "over", ...; nas/data/synthetic.py).
A generated caption is parsed the same way (a shape word without a size and a colour before it is
not an object: a degenerate "circle circle" describes nothing), and per attribute:
- count: the number of distinct objects it describes equals the number in the scene;
- colour, shape: the set of colours (shapes) it names equals the scene's (a scene's objects have
  distinct colours and distinct shapes);
- size: the multiset of sizes of the described objects equals the scene's;
- objects: the set of (size, colour, shape) triples equals the scene's (attributes bound correctly);
- relation (scenes with >= 2 objects only): it states at least one relation, and every stated
  relation is true in the scene (the scene record lists every true relation);
- caption: the text equals one of the scene's ground-truth captions.
Positions (hpos, vpos) are not words of the captions, so they are not scored here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nas.data.synthetic import RELATION_PHRASES as SYNTHETIC_RELATION_PHRASES

NextLogits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Relation phrases of the synthetic caption templates as word tuples -> canonical names, from their
# one source (nas.data.synthetic.RELATION_PHRASES): a new template wording is parsed here unchanged.
RELATION_PHRASES = {
    tuple(phrase.split()): relation for phrase, relation in SYNTHETIC_RELATION_PHRASES.items()
}
MATCH_KEYS = ("count", "colour", "shape", "size", "objects", "relation", "caption")


@dataclass
class GenerationConfig:
    """Caption decoding. Defaults: the tiny profile (context 32 tokens; CLIP/MUG paper scale: 77)."""

    max_length: int = 32  # tokens per sequence, SOT and EOT included
    beam_size: int = 3
    # Final beam ranking: sum of log-probabilities / (generated tokens incl. EOT) ** length_penalty.
    length_penalty: float = 1.0
    batch_size: int = 100  # images decoded together

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2 (SOT and one token), got {self.max_length}")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.length_penalty < 0:
            raise ValueError(f"length_penalty must be >= 0, got {self.length_penalty}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class Generated:
    """One decoded sequence: the tokens after SOT and before EOT, and whether EOT was produced."""

    tokens: list[int]
    finished: bool
    score: float = 0.0  # sum of log-probabilities of the generated tokens (EOT included)
    text: str = ""  # filled in by `generate_captions`


def _banned_bias(vocab_size: int, banned: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    bias = torch.zeros(vocab_size, dtype=like.dtype, device=like.device)
    if banned:
        bias[list(banned)] = float("-inf")
    return bias


@torch.no_grad()
def greedy_generate(
    next_logits: NextLogits,
    batch_size: int,
    *,
    sot_id: int,
    eot_id: int,
    max_length: int,
    banned_ids: Sequence[int] = (),
    device: torch.device | str = "cpu",
) -> list[Generated]:
    """Argmax decoding of `batch_size` sequences; finished rows are no longer run."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    prefix = torch.full((batch_size, 1), sot_id, dtype=torch.long, device=device)
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)
    scores = torch.zeros(batch_size, dtype=torch.float64, device=device)
    for _ in range(max_length - 1):
        rows = (~done).nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        logits = next_logits(prefix[rows], rows).float()
        logp = torch.log_softmax(logits + _banned_bias(logits.shape[-1], banned_ids, logits), dim=-1)
        best = logp.argmax(dim=-1)
        step = torch.full((batch_size,), eot_id, dtype=torch.long, device=device)
        step[rows] = best
        scores[rows] += logp.gather(1, best[:, None]).squeeze(1).double()
        prefix = torch.cat([prefix, step[:, None]], dim=1)
        done[rows] |= best == eot_id
    return [_trim(prefix[b, 1:].tolist(), eot_id, float(scores[b])) for b in range(batch_size)]


def _trim(tokens: list[int], eot_id: int, score: float) -> Generated:
    if eot_id in tokens:
        return Generated(tokens[: tokens.index(eot_id)], True, score)
    return Generated(tokens, False, score)


@torch.no_grad()
def beam_generate(
    next_logits: NextLogits,
    batch_size: int,
    *,
    sot_id: int,
    eot_id: int,
    max_length: int,
    beam_size: int,
    length_penalty: float = 1.0,
    banned_ids: Sequence[int] = (),
    device: torch.device | str = "cpu",
) -> list[Generated]:
    """Beam search over `batch_size` images at once (rows = image x beam). A finished beam keeps its
    score and only extends with EOT at no cost; at the end each image returns its beam with the best
    length-normalised score (sum of log-probabilities / length ** length_penalty)."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    k = beam_size
    seqs = torch.full((batch_size, k, 1), sot_id, dtype=torch.long, device=device)
    scores = torch.zeros(batch_size, k, dtype=torch.float64, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: expand only the first
    done = torch.zeros(batch_size, k, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch_size, k, dtype=torch.long, device=device)
    image_of_row = torch.arange(batch_size, device=device).repeat_interleave(k)
    for _ in range(max_length - 1):
        if bool(done.all()):
            break
        logits = next_logits(seqs.reshape(batch_size * k, -1), image_of_row).float()
        vocab = logits.shape[-1]
        logp = torch.log_softmax(logits + _banned_bias(vocab, banned_ids, logits), dim=-1).double()
        logp = logp.reshape(batch_size, k, vocab)
        # A finished beam: one continuation (EOT) at log-probability 0, so its score stays put.
        frozen = torch.full((vocab,), float("-inf"), dtype=logp.dtype, device=device)
        frozen[eot_id] = 0.0
        logp = torch.where(done[:, :, None], frozen, logp)
        candidates = (scores[:, :, None] + logp).reshape(batch_size, k * vocab)
        top_scores, top = candidates.topk(k, dim=1)
        parent, token = top // vocab, top % vocab
        seqs = torch.cat([seqs.gather(1, parent[:, :, None].expand_as(seqs)), token[:, :, None]], dim=2)
        was_done = done.gather(1, parent)
        lengths = lengths.gather(1, parent) + (~was_done).long()
        done = was_done | (token == eot_id)
        scores = top_scores
    normalised = scores / lengths.clamp(min=1).double().pow(length_penalty)
    best = normalised.argmax(dim=1)
    out = []
    for b in range(batch_size):
        j = int(best[b])
        out.append(_trim(seqs[b, j, 1:].tolist(), eot_id, float(scores[b, j])))
    return out


# ---- exact match against the scene ground truth ---------------------------------------------------


@dataclass(frozen=True)
class CaptionVocabulary:
    sizes: frozenset[str]
    colours: frozenset[str]
    shapes: frozenset[str]

    @classmethod
    def from_synthetic(cls, cfg: Any) -> CaptionVocabulary:
        """From a `nas.data.synthetic.SyntheticConfig` (the words the data set draws)."""
        return cls(frozenset(cfg.sizes), frozenset(cfg.colours), frozenset(cfg.shapes))


@dataclass
class ParsedCaption:
    objects: list[tuple[str, str, str]]  # distinct (size, colour, shape) in order
    relations: list[tuple[int, str, int]]  # (subject, canonical relation, object) into `objects`


def _relation_at(words: list[str], i: int) -> tuple[str, int] | None:
    """(canonical relation, words it spans) if a relation phrase starts at `words[i]`."""
    for phrase, relation in RELATION_PHRASES.items():
        if tuple(words[i : i + len(phrase)]) == phrase:
            return relation, len(phrase)
    return None


def parse_caption(text: str, vocab: CaptionVocabulary) -> ParsedCaption:
    """Objects ("[det] size colour shape") and the relations stated between consecutive ones."""
    words = text.lower().replace(",", " ").split()
    mentions: list[int] = []  # object index of every mention, in order
    objects: list[tuple[str, str, str]] = []
    relations: list[tuple[int, str, int]] = []
    size = colour = None
    pending_relation: str | None = None
    i = 0
    while i < len(words):
        word, relation = words[i], _relation_at(words, i)
        if relation is not None and mentions:
            pending_relation = relation[0]
            i += relation[1]
            continue
        if word in vocab.sizes:
            size = word
        elif word in vocab.colours:
            colour = word
        elif word in vocab.shapes and size is not None and colour is not None:
            triple = (size, colour, word)
            if triple not in objects:
                objects.append(triple)
            index = objects.index(triple)
            if pending_relation is not None and mentions:
                relations.append((mentions[-1], pending_relation, index))
            mentions.append(index)
            size = colour = pending_relation = None
        elif word in vocab.shapes or word == "and":  # an incomplete mention, or a new clause
            size = colour = pending_relation = None
        i += 1
    return ParsedCaption(objects, relations)


def attribute_matches(text: str, scene: dict[str, Any], vocab: CaptionVocabulary) -> dict[str, bool | None]:
    """{attribute: exact match} of one generated caption against one scene (see the module docstring);
    None where the attribute is undefined for the scene (relation with one object)."""
    parsed = parse_caption(text, vocab)
    truth = [(o["size"], o["colour"], o["shape"]) for o in scene["objects"]]
    said = parsed.objects
    result: dict[str, bool | None] = {
        "count": len(said) == len(truth),
        "colour": {c for _, c, _ in said} == {c for _, c, _ in truth},
        "shape": {s for _, _, s in said} == {s for _, _, s in truth},
        "size": Counter(z for z, _, _ in said) == Counter(z for z, _, _ in truth),
        "objects": set(said) == set(truth),
        "relation": None,
        "caption": text.strip() in {c["text"] for c in scene.get("captions", [])},
    }
    if len(truth) >= 2:
        true_relations = {(r["subject"], r["relation"], r["object"]) for r in scene["relations"]}
        index_of = {(colour, shape): k for k, (_, colour, shape) in enumerate(truth)}

        def holds(subject: int, relation: str, obj: int) -> bool:
            a = index_of.get(said[subject][1:])
            b = index_of.get(said[obj][1:])
            return a is not None and b is not None and (a, relation, b) in true_relations

        result["relation"] = bool(parsed.relations) and all(holds(*r) for r in parsed.relations)
    return result


def exact_match_rates(
    texts: Sequence[str], scenes: Sequence[dict[str, Any]], vocab: CaptionVocabulary
) -> dict[str, dict[str, float | int]]:
    """Per attribute: {"accuracy" (percent of scenes where it is defined), "n"}; plus "all": every
    defined attribute of a scene matches (the caption string itself aside)."""
    if len(texts) != len(scenes):
        raise ValueError(f"{len(texts)} captions for {len(scenes)} scenes")
    hits: dict[str, list[bool]] = {key: [] for key in (*MATCH_KEYS, "all")}
    for text, scene in zip(texts, scenes):
        matches = attribute_matches(text, scene, vocab)
        for key, value in matches.items():
            if value is not None:
                hits[key].append(value)
        hits["all"].append(all(v for k, v in matches.items() if v is not None and k != "caption"))
    return {
        key: {"accuracy": 100.0 * sum(values) / len(values) if values else float("nan"), "n": len(values)}
        for key, values in hits.items()
    }


# ---- a captioning model -> text -------------------------------------------------------------------


@torch.no_grad()
def generate_captions(
    model: Any,
    images: torch.Tensor,
    decode: Callable[[list[int]], str],
    cfg: GenerationConfig,
    *,
    beam: bool = False,
) -> list[Generated]:
    """Captions of preprocessed `images` [N, 3, H, W] from a model with the MUG captioning API:
    `encode(images) -> image tokens`, `caption_logits(image_tokens, ids) -> [B, T, V]`, `sot_id`,
    `eot_id`, `banned_generation_ids`, `to_bpe(ids)`. `decode` maps tokenizer ids to text; the text
    is stored in each result's `text` attribute. The model runs unmasked, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[Generated] = []
    try:
        for start in range(0, len(images), cfg.batch_size):
            latent = model.encode(images[start : start + cfg.batch_size].to(device))

            def next_logits(
                prefix: torch.Tensor, rows: torch.Tensor, latent: torch.Tensor = latent
            ) -> torch.Tensor:
                return model.caption_logits(latent[rows], prefix)[:, -1]

            common = dict(
                sot_id=model.sot_id,
                eot_id=model.eot_id,
                max_length=cfg.max_length,
                banned_ids=model.banned_generation_ids,
                device=device,
            )
            if beam:
                batch = beam_generate(
                    next_logits,
                    len(latent),
                    beam_size=cfg.beam_size,
                    length_penalty=cfg.length_penalty,
                    **common,
                )
            else:
                batch = greedy_generate(next_logits, len(latent), **common)
            for item in batch:
                ids = model.to_bpe(torch.tensor(item.tokens, dtype=torch.long, device=device)).tolist()
                item.text = decode(ids)
            out.extend(batch)
    finally:
        model.train(was_training)
    return out
