"""Synthetic fine-grained probes, written in the official on-disk formats of ARO, Winoground, VALSE
and SugarCrepe (BENCHMARKS.md §1.2, §2.2, §3.2, §4), so that the harness's own benchmark loaders
read them exactly as they read the real benchmarks.

Made from the held-out (test) scenes of the embedded synthetic data (nas.data.synthetic). Every
positive text is checked "true" and every negative "false" against the scene's ground truth
(`nas.data.nta.caption_truth`, built on `true_relations`), and a ProbeError stops the run
otherwise. Layout under `out_root`:

  aro/           visual_genome_relation.json, visual_genome_attribution.json, images/
  coco_order/    coco_karpathy_test.json, val2014/, caption_tags.json (the Order tagger's tags)
  winoground/    examples.jsonl, images/ex_<id>_img_<k>.png
  valse/         existence.json, counting-small-quant.json, plurals.json, relations.json,
                 attributes.json, images/
  sugarcrepe/    the 7 SugarCrepe files, val2017/
  provenance.json  per benchmark and test case: source scene, edit kind, held-out combination
  manifest.json    counts, config, how to load each benchmark, sha256 of every file; written last
                   (atomically, once every file is fsync'd): no manifest, no complete probe folder

    count_cases(scenes, SyntheticConfig(), ProbeConfig())  # sizes a test split, nothing written
    manifest = write_probes("data/synthetic", "data/probes", ProbeConfig())
    for name, spec in probe_benchmarks("data/probes").items():
        evaluate_benchmark(name, spec["root"], scorer, spec["config"], **spec["load_options"])

Randomness: each benchmark (and VALSE instrument, SugarCrepe file) draws from its own
`np.random.Generator` seeded by (seed, its name), so changing one size leaves the others alone.

One module per benchmark writer, as nas/evaluation/benchmarks has one per loader: aro.py
(VG-Relation, VG-Attribution), aro_order.py (COCO-Order and the Order text tools), winoground.py,
valse.py, sugarcrepe.py; common.py holds the config, the source scenes and the checks they share,
suite.py plans, writes and reads the whole probe folder. The names below are the package's API.
"""

from __future__ import annotations

from nas.data.probes.aro_order import (
    REAL_TAGGER,
    REAL_TOKENIZER,
    ROLE_TAGS,
    SYNTHETIC_TAGGER,
    SYNTHETIC_TOKENIZER,
    order_tagger,
    whitespace_tokenizer,
)
from nas.data.probes.common import (
    BENCHMARK_FOLDERS,
    FORMAT_VERSION,
    TOP_FILES,
    ProbeConfig,
    ProbeError,
    _prepare,
    _refuse_non_empty,
    _write_json,
)
from nas.data.probes.sugarcrepe import SUGARCREPE_FILES
from nas.data.probes.suite import count_cases, probe_benchmarks, write_probes
from nas.data.probes.valse import VALSE_INSTRUMENTS
from nas.data.probes.winoground import WINOGROUND_KINDS, WINOGROUND_SECONDARY_TAG

__all__ = [
    "BENCHMARK_FOLDERS",
    "FORMAT_VERSION",
    "REAL_TAGGER",
    "REAL_TOKENIZER",
    "ROLE_TAGS",
    "SUGARCREPE_FILES",
    "SYNTHETIC_TAGGER",
    "SYNTHETIC_TOKENIZER",
    "TOP_FILES",
    "VALSE_INSTRUMENTS",
    "WINOGROUND_KINDS",
    "WINOGROUND_SECONDARY_TAG",
    "ProbeConfig",
    "ProbeError",
    "_prepare",  # nas.evaluation.benchmark_folders writes its manifest by the probes' rules
    "_refuse_non_empty",
    "_write_json",
    "count_cases",
    "order_tagger",
    "probe_benchmarks",
    "whitespace_tokenizer",
    "write_probes",
]
