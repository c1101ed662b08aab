"""The report's tables: replicates become mean ± sample std, recipes join the same tables."""

from __future__ import annotations

import json

import pytest

from nas.reporting.results import (
    fine_grained_rows,
    fine_grained_tables,
    model_rows,
    read_replicates,
    retrieval_table,
)


def _winoground(text: float) -> dict:
    return {
        "winoground": {
            "itm_probability": {
                "metrics": {"text": text, "image": 0.0, "group": 0.0},
                "n_cases": 12,
                "chance": {"text": 25.0, "image": 25.0, "group": 16.7},
            }
        }
    }


def _retrieval(r1: float) -> dict:
    metrics = {k: r1 for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")}
    return {
        "n_images": 10,
        "n_texts": 20,
        "chance": {"i2t_r1": 10.0, "t2i_r1": 5.0},
        "scorer": "ITC cosine",
        "metrics": metrics,
    }


EVALUATIONS = {
    "nas": {
        "models": {
            "pretrain_stage2": {
                "replicates": [{"retrieval": _retrieval(30.0), "fine_grained": _winoground(10.0)}]
            },
            "finetune": {
                "replicates": [
                    {"retrieval": _retrieval(20.0), "fine_grained": _winoground(10.0)},
                    {"retrieval": _retrieval(40.0), "fine_grained": _winoground(30.0)},
                ]
            },
        }
    }
}


def test_rows_are_variant_by_stage():
    assert [label for label, _ in model_rows(EVALUATIONS)] == ["nas (pretrained)", "nas (fine-tuned)"]


def test_retrieval_cells_are_mean_and_sample_std():
    lines = retrieval_table(EVALUATIONS)
    assert "| nas (pretrained) | ITC cosine | 1 | 10 | 20 | 30.0 |" in lines[2]
    # mean 30, sample std of (20, 40) = 14.1; mean R@1 / chance: 30 / 10 and 30 / 5
    assert "| nas (fine-tuned) | ITC cosine | 2 | 10 | 20 | 30.0 ± 14.1 |" in lines[3]
    assert lines[3].endswith("| 10.00 / 5.00 | 3.0x / 6.0x |")


def test_recipe_rows_join_the_benchmark_tables():
    results = {
        "evaluate": EVALUATIONS,
        "recipes": {
            "mug": {
                "recipe": "mug",
                "rows": {
                    "mug (caption-ll)": {
                        "seeds": [0, 1, 2],
                        "per_seed": [_winoground(v) for v in (20.0, 30.0, 40.0)],
                    }
                },
            }
        },
    }
    lines = fine_grained_tables(fine_grained_rows(results))
    assert lines[0] == "### winoground (12 probe cases)"
    assert "| nas (fine-tuned) | itm_probability | 2 | 20.0 ± 14.1 | 0.0 ± 0.0 | 0.0 ± 0.0 |" in lines
    assert "| mug (caption-ll) | itm_probability | 3 | 30.0 ± 10.0 | 0.0 ± 0.0 | 0.0 ± 0.0 |" in lines
    assert "| chance | — | | 25.0 | 25.0 | 16.7 |" in lines


def test_a_training_stage_is_gathered_from_its_seed_files_as_study_seeds_lists(tmp_path):
    """Each matrix entry `<stage>@<variant>-<k>` writes `<variant>/seed<k>.json`; the report gathers the seeds
    `study.seeds` lists, in that order, leaves out a seed no longer listed (DVC keeps an old entry's outs) and
    names a listed seed whose file is missing."""
    folder = tmp_path / "pretrain_stage1"
    (folder / "albef").mkdir(parents=True)
    for k in (0, 1, 2, 10):
        (folder / "albef" / f"seed{k}.json").write_text(json.dumps({"seed": 42 + k, "final": {"itm": k}}))
    gathered = read_replicates(folder, (2, 0))["albef"]
    assert gathered["seeds"] == [2, 0] and list(gathered["replicates"]) == ["2", "0"]
    assert gathered["seed"] == 44  # the first listed replicate stands for the stage (its curves)
    every = read_replicates(folder)["albef"]
    assert every["seeds"] == [0, 1, 2, 10]  # numeric order, not "10" before "2"
    with pytest.raises(FileNotFoundError, match=r"albef/seed3\.json: missing; study\.seeds lists it"):
        read_replicates(folder, (0, 3))
    assert read_replicates(tmp_path / "absent", (0,)) == {}
