"""Zero-shot attribute classification through a CLIP text tower (MUG_UTA.md §2, claim 2).

Each class of an attribute (colour, shape, size) is the mean of its prompt embeddings, re-normalised
(CLIP's prompt ensembling; the prompts are `scene_attributes.zero_shot_prompts`, in the captions' own
words); an image is assigned the class whose text embedding has the highest cosine with the image
embedding. The same frozen text tower serves the teacher's own image embeddings and the UTA
student's, so the two accuracies are directly comparable.

The prompts name one object, so the figures are computed on single-object scenes (where "the
object" is unambiguous; there `scene_attributes`' colour, shape and size are that object's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from nas.evaluation.scene_attributes import zero_shot_prompts

ZERO_SHOT_ATTRIBUTES = ("colour", "shape", "size")

TextEncoder = Callable[[list[str]], torch.Tensor]  # texts -> L2-normalised embeddings [T, D]


Classifier = dict[str, tuple[list[str], torch.Tensor]]  # attribute -> (class names, [C, D] unit vectors)


@torch.no_grad()
def class_embeddings(attribute: str, encode_text: TextEncoder) -> tuple[list[str], torch.Tensor]:
    """(class names, [C, D] unit vectors): the mean prompt embedding of each class, re-normalised."""
    prompts = zero_shot_prompts(attribute)
    names = sorted(prompts)
    rows = [F.normalize(encode_text(list(prompts[name])).float().mean(dim=0), dim=-1) for name in names]
    return names, torch.stack(rows)


def build_classifier(
    encode_text: TextEncoder, attributes: Sequence[str] = ZERO_SHOT_ATTRIBUTES
) -> Classifier:
    """The class embeddings of every attribute through one text tower (computed once, reused)."""
    return {attribute: class_embeddings(attribute, encode_text) for attribute in attributes}


def single_object_rows(counts: Sequence[str | None]) -> list[int]:
    """Rows of scenes holding exactly one object (`scene_attributes` count "1")."""
    return [i for i, count in enumerate(counts) if count == "1"]


@torch.no_grad()
def zero_shot_accuracy(
    image_embeddings: torch.Tensor,
    labels: dict[str, Sequence[str | None]],
    classifier: Classifier,
    rows: Sequence[int] | None = None,
    outcomes: bool = False,
) -> dict[str, dict[str, Any]]:
    """{attribute: {"accuracy", "chance" (percent), "n", "n_classes"}} over `rows` (default: all).

    `image_embeddings` [N, D] are L2-normalised, one per labelled image; rows labelled None are
    skipped; a label outside the prompt classes is an error (the prompts do not cover the data).
    `outcomes=True` adds "_correct" (0/1 per evaluated row, in order) and "_rows" (their indices):
    the per-case data of the bootstrap intervals (`nas.evaluation.linear_probe.public` drops them).
    """
    n = image_embeddings.shape[0]
    rows = list(range(n)) if rows is None else list(rows)
    if not rows:
        raise ValueError("zero-shot accuracy over no images (no single-object scene in the split?)")
    out: dict[str, dict[str, Any]] = {}
    for attribute, (names, classes) in classifier.items():
        if len(labels[attribute]) != n:
            raise ValueError(f"{attribute}: {n} image embeddings but {len(labels[attribute])} labels")
        kept = [i for i in rows if labels[attribute][i] is not None]
        unknown = sorted({str(labels[attribute][i]) for i in kept} - set(names))
        if unknown:
            raise ValueError(f"{attribute}: labels {unknown} have no zero-shot prompt (classes {names})")
        if not kept:
            raise ValueError(f"{attribute}: no labelled image among the evaluated rows")
        logits = image_embeddings[kept].float() @ classes.to(image_embeddings.device).T
        predicted = [names[j] for j in logits.argmax(dim=1).tolist()]
        hits = [float(p == labels[attribute][i]) for p, i in zip(predicted, kept, strict=True)]
        out[attribute] = {
            "accuracy": 100.0 * sum(hits) / len(kept),
            "chance": 100.0 / len(names),
            "n": len(kept),
            "n_classes": len(names),
        }
        if outcomes:
            out[attribute] |= {"_correct": hits, "_rows": kept}
    return out


def mean_accuracy(result: dict[str, dict[str, Any]]) -> float:
    """Mean accuracy over the attributes of a `zero_shot_accuracy` result."""
    return sum(r["accuracy"] for r in result.values()) / len(result)
