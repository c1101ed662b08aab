"""`nas score`: rescoring score files of every supported format, and the errors of bad files.

Score files are built in tmp_path over the shipped VALSE / SugarCrepe annotations (hand-checkable
figures) or over synthetic Winoground / ARO cases; no model, no image is opened.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from bench_fakes import LookupScorer, write_image, write_json

from nas import cli
from nas.evaluation.benchmarks import (
    BenchmarkCase,
    ImageRef,
    ScoreError,
    ScoreFileError,
    detect_format,
    evaluate_benchmark,
    official_score_path,
    resource_path,
    score_from_file,
    write_score_file,
)
from nas.evaluation.benchmarks.aro import load_vg_relation
from nas.evaluation.benchmarks.rescore import rescore
from nas.evaluation.benchmarks.sugarcrepe import SugarCrepeConfig, load_sugarcrepe
from nas.evaluation.benchmarks.valse import load_valse
from nas.evaluation.benchmarks.winoground import read_official_scores

SWAP_OBJ = SugarCrepeConfig(files=("swap_obj",))
EXAMPLE = Path(__file__).resolve().parents[3] / "nas" / "resources" / "examples"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["score", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------------------------
# Winoground: synthetic examples (the dataset is gated), official and harness files


# s(c_j, i_k) per example as (c0i0, c1i0, c0i1, c1i1): example 0 right everywhere, example 1 a
# tie on image 0 (text false, so group false), example 2 text right but image wrong.
WINO_SCORES = {0: (0.9, 0.1, 0.2, 0.8), 1: (0.5, 0.5, 0.7, 0.4), 2: (0.6, 0.5, 0.2, 0.3)}
WINO_TAGS = [("Object", 1, ""), ("Relation", 2, "Symbolic"), ("Both", 1, "Symbolic, Series")]


@pytest.fixture
def wino_root(tmp_path: Path) -> Path:
    root = tmp_path / "winoground"
    records = []
    for example, (collapsed, preds, secondary) in enumerate(WINO_TAGS):
        records.append(
            {
                "id": example,
                "caption_0": f"caption zero of {example}",
                "caption_1": f"caption one of {example}",
                "image_0": f"ex_{example}_img_0",
                "image_1": f"ex_{example}_img_1",
                "tag": "Noun",
                "secondary_tag": secondary,
                "num_main_preds": preds,
                "collapsed_tag": collapsed,
            }
        )
        for k in (0, 1):
            write_image(root / "images" / f"ex_{example}_img_{k}.png", (8, 8))
    (root / "examples.jsonl").write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    return root


def wino_table() -> dict[tuple[str, str], float]:
    table = {}
    for example, (c0i0, c1i0, c0i1, c1i1) in WINO_SCORES.items():
        c0, c1 = f"caption zero of {example}", f"caption one of {example}"
        i0, i1 = f"ex_{example}_img_0.png", f"ex_{example}_img_1.png"
        table.update({(i0, c0): c0i0, (i0, c1): c1i0, (i1, c0): c0i1, (i1, c1): c1i1})
    return table


def write_official(path: Path, scores: dict[int, tuple[float, float, float, float]]) -> Path:
    """Official lines from (c0i0, c1i0, c0i1, c1i1) tuples, in the hub's label order."""
    lines = []
    for example, (c0i0, c1i0, c0i1, c1i1) in scores.items():
        for label, score in (("c0_i0", c0i0), ("c0_i1", c0i1), ("c1_i0", c1i0), ("c1_i1", c1i1)):
            lines.append(json.dumps({"label": f"{example}_{label}", "score": score}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_winoground_official_file_without_examples_jsonl(tmp_path: Path, capsys) -> None:
    path = write_official(tmp_path / "model.jsonl", WINO_SCORES)
    code, out, err = run_cli(capsys, "winoground", path)
    assert (code, err) == (0, "")
    # text: examples 0 and 2 -> 66.67; image: example 0 -> 33.33; group: example 0 -> 33.33
    assert "text    66.67   (chance 25.00)" in out
    assert "image   33.33   (chance 25.00)" in out
    assert "group   33.33   (chance 16.67)" in out
    assert "format winoground, scorer model, 3 cases, annotations none" in out
    assert "tag breakdowns: need examples.jsonl" in out
    payload = rescore("winoground", path)
    assert payload["metrics"]["breakdowns"] is None and payload["annotations"] is None
    assert payload["headline"] == pytest.approx({"text": 200 / 3, "image": 100 / 3, "group": 100 / 3})


def test_winoground_with_examples_jsonl_adds_the_breakdowns(wino_root: Path, tmp_path: Path) -> None:
    path = write_official(tmp_path / "model.jsonl", WINO_SCORES)
    for where in (wino_root, wino_root / "examples.jsonl"):  # the folder or the file
        payload = rescore("winoground", path, annotations=where)
        breakdowns = payload["metrics"]["breakdowns"]
        assert breakdowns["collapsed_tag"]["Both"] == {"text": 100.0, "image": 0.0, "group": 0.0, "n": 1}
        assert breakdowns["secondary_tag"]["Symbolic"]["n"] == 1  # exact equality
    partial = write_official(tmp_path / "partial.jsonl", {0: WINO_SCORES[0]})
    with pytest.raises(ScoreError, match=r"2 missing \(e\.g\. \['1', '2'\]\)"):
        rescore("winoground", partial, annotations=wino_root)


def test_chance_over_the_24_orderings_without_annotations() -> None:
    payload = rescore("winoground", EXAMPLE / "winoground_chance.official.jsonl")
    assert payload["headline"] == pytest.approx({"text": 25.0, "image": 25.0, "group": 100 * 4 / 24})
    assert payload["n_cases"] == 24


def test_shipped_example_is_the_24_orderings() -> None:
    expected = []
    for example, (c0i0, c0i1, c1i0, c1i1) in enumerate(itertools.permutations((1, 2, 3, 4))):
        for label, score in (("c0_i0", c0i0), ("c0_i1", c0i1), ("c1_i0", c1i0), ("c1_i1", c1i1)):
            expected.append(json.dumps({"label": f"{example}_{label}", "score": float(score)}))
    text = (EXAMPLE / "winoground_chance.official.jsonl").read_text(encoding="utf-8")
    assert text == "\n".join(expected) + "\n"


def test_evaluate_writes_the_official_winoground_file_beside_the_harness_file(
    wino_root: Path, tmp_path: Path, capsys
) -> None:
    harness = tmp_path / "scores" / "winoground.lookup.jsonl"
    harness.parent.mkdir()
    result = evaluate_benchmark("winoground", wino_root, LookupScorer(wino_table()), score_file=harness)
    official = official_score_path(harness)
    assert official == tmp_path / "scores" / "winoground.lookup.official.jsonl"
    assert detect_format(harness) == "harness" and detect_format(official) == "winoground"
    assert len(official.read_text(encoding="utf-8").splitlines()) == 12
    # The official file alone (no examples.jsonl) gives the harness's own overall figures ...
    code, out, _ = run_cli(capsys, "winoground", official, "--out", tmp_path / "figures.json")
    assert code == 0 and f"wrote {tmp_path / 'figures.json'}" in out
    written = json.loads((tmp_path / "figures.json").read_text(encoding="utf-8"))
    metrics = result["metrics"]
    assert written["headline"] == {key: metrics[key] for key in ("text", "image", "group")}
    assert written["format"] == "winoground" and written["n_cases"] == 3
    # ... and with examples.jsonl, every figure, breakdowns included; so does the harness file.
    for path in (official, harness):
        again = rescore("winoground", path, annotations=wino_root)
        assert again["metrics"] == metrics
    assert rescore("winoground", harness)["scorer"] == "lookup"  # the harness header names it


def test_the_official_companion_file_can_be_switched_off(wino_root: Path, tmp_path: Path) -> None:
    harness = tmp_path / "w.jsonl"
    evaluate_benchmark(
        "winoground", wino_root, LookupScorer(wino_table()), score_file=harness, official_score_file=False
    )
    assert harness.exists() and not official_score_path(harness).exists()


# ---------------------------------------------------------------------------------------------
# SugarCrepe and VALSE on the shipped annotations


def test_sugarcrepe_harness_file_on_the_shipped_annotations(tmp_path: Path, capsys) -> None:
    cases = load_sugarcrepe(None, check_images=False)
    path = tmp_path / "sugarcrepe.oracle.jsonl"
    write_score_file(path, "sugarcrepe", cases, {c.case_id: np.array([[1.0, 0.0]]) for c in cases}, "oracle")
    code, out, _ = run_cli(capsys, "sugarcrepe", path)
    assert code == 0
    assert "format harness, scorer oracle, 7511 cases, annotations shipped" in out
    for line in ("mean of files     100.00", "Replace (pooled)  100.00", "swap_obj     100.00  (245 cases"):
        assert line in out


def test_sugarcrepe_one_file_with_wrong_answers_and_ties(tmp_path: Path) -> None:
    swap_obj = resource_path("sugarcrepe", "swap_obj.json")
    cases = load_sugarcrepe(None, SugarCrepeConfig(files=("swap_obj",)), check_images=False)
    # the first 40 records reversed (wrong), the next 5 tied (wrong: strict >), the other 200 right
    scores = {
        c.case_id: np.array([[0.0, 1.0] if i < 40 else [0.5, 0.5] if i < 45 else [1.0, 0.0]])
        for i, c in enumerate(cases)
    }
    path = tmp_path / "swap.jsonl"
    write_score_file(path, "sugarcrepe", cases, scores, "mixed")
    payload = rescore("sugarcrepe", path, annotations=swap_obj)  # one file: only its records
    assert payload["metrics"]["files"] == {
        "swap_obj": {"accuracy": pytest.approx(100 * 200 / 245), "n": 245, "n_ties": 5}
    }
    assert payload["headline"]["Swap (pooled)"] == pytest.approx(100 * 200 / 245)


def fge_file(tmp_path: Path, wrong: str = "") -> Path:
    """FGE-format file over the shipped VALSE: caption 0.9 > foil 0.2, reversed for `wrong`."""
    cases = load_valse(None, check_images=False)
    scores = {
        c.case_id: np.array([[0.2, 0.9]] if c.meta["instrument"] == wrong else [[0.9, 0.2]]) for c in cases
    }
    path = tmp_path / "valse.fge.jsonl"
    write_score_file(path, "valse", cases, scores, "x", "fge")
    return path


def test_valse_fge_file_on_the_shipped_annotations(tmp_path: Path, capsys) -> None:
    path = fge_file(tmp_path, wrong="existence")  # existence (505 valid samples) all wrong
    code, out, _ = run_cli(capsys, "valse", path, "--set", "match_threshold=0.5")
    assert code == 0 and "format fge" in out and "7702 cases" in out
    payload = rescore("valse", path, overrides=["match_threshold=0.5"])
    headline = payload["headline"]
    assert headline["acc_r (macro)"] == pytest.approx(100 * 10 / 11)  # 10 of 11 instruments at 100
    assert headline["acc_r (micro)"] == pytest.approx(100 * (7702 - 505) / 7702)
    existence = payload["metrics"]["instruments"]["existence"]
    # caption 0.2 does not fit, foil 0.9 is not detected: p_c = p_f = 0
    assert (existence["n"], existence["acc_r"], existence["p_c"], existence["p_f"]) == (505, 0.0, 0.0, 0.0)
    assert payload["config"]["match_threshold"] == 0.5


def test_probe_manifest_gives_root_and_config(tmp_path: Path) -> None:
    probes = tmp_path / "probes"
    (probes / "sugarcrepe").mkdir(parents=True)
    shutil.copy(resource_path("sugarcrepe", "swap_obj.json"), probes / "sugarcrepe" / "swap_obj.json")
    manifest = {
        "format_version": 1,
        "benchmarks": {
            "sugarcrepe": {"root": "sugarcrepe", "config": {"annotation_dir": ".", "files": ["swap_obj"]}}
        },
    }
    write_json(probes / "manifest.json", manifest)
    config = SugarCrepeConfig(annotation_dir=str(probes / "sugarcrepe"), files=("swap_obj",))
    cases = load_sugarcrepe(None, config, check_images=False)
    path = tmp_path / "sugarcrepe.itm.jsonl"
    write_score_file(path, "sugarcrepe", cases, {c.case_id: np.array([[1.0, 0.0]]) for c in cases}, "itm")
    payload = rescore("sugarcrepe", path, probes=probes)
    assert payload["n_cases"] == 245 and payload["headline"]["mean of files"] == 100.0
    with pytest.raises(ValueError, match="not among the probes"):
        rescore("valse", path, probes=probes)


# ---------------------------------------------------------------------------------------------
# ARO


def test_vg_relation_needs_and_takes_its_annotation_file(tmp_path: Path) -> None:
    records = [
        {
            "image_path": "1.jpg",
            "bbox_x": 0,
            "bbox_y": 0,
            "bbox_w": 4,
            "bbox_h": 4,
            "relation_name": name,
            "true_caption": f"true {i}",
            "false_caption": f"false {i}",
        }
        for i, name in enumerate(["on", "on", "near", "holding"])
    ]
    annotation = write_json(tmp_path / "vg" / "visual_genome_relation.json", records)
    cases = load_vg_relation(annotation.parent, check_images=False)
    # options [false, true]: "on" 1 right + 1 wrong, "near" right (but excluded), "holding" a tie
    rows = [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]
    path = tmp_path / "vgr.jsonl"
    write_score_file(path, "vg_relation", cases, {c.case_id: np.array([r]) for c, r in zip(cases, rows)}, "t")
    with pytest.raises(ValueError, match="vg_relation: --annotations is required"):
        rescore("vg_relation", path)
    payload = rescore("vg_relation", path, annotations=annotation)
    assert payload["headline"] == {"macro acc": 25.0, "micro acc": pytest.approx(100 / 3)}  # (50 + 0) / 2
    assert payload["metrics"]["n_groups_kept"] == 2
    everything = rescore(
        "vg_relation", path, annotations=annotation.parent, overrides=["exclude_relations=false"]
    )
    assert everything["headline"]["macro acc"] == pytest.approx((50 + 100 + 0) / 3)


def test_order_harness_file_without_annotations(tmp_path: Path, capsys) -> None:
    texts = ("a dog on a ball", "dog a on ball a", "a ball on a dog", "on a dog a ball", "ball a dog on a")
    rows = {
        "seed1/0_0": [3.0, 1.0, 2.0, 0.0, 0.0],  # right
        "seed1/0_1": [2.0, 2.0, 1.0, 0.0, 0.0],  # tie with the original: right
        "seed2/0_0": [3.0, 1.0, 2.0, 0.0, 0.0],  # right
        "seed2/0_1": [1.0, 2.0, 0.0, 0.0, 0.0],  # wrong
    }
    cases = [BenchmarkCase(cid, (ImageRef(Path("x.jpg")),), texts) for cid in rows]
    path = tmp_path / "coco_order.t.jsonl"
    write_score_file(path, "coco_order", cases, {cid: np.array([r]) for cid, r in rows.items()}, "t")
    code, out, _ = run_cli(capsys, "coco_order", path)
    assert code == 0
    assert "P@1 (mean over seeds)   75.00   (chance 20.00)" in out
    assert "seed 1: P@1 100.00 (2 cases, 1 ties)" in out and "seed 2: P@1 50.00 (2 cases, 0 ties)" in out
    payload = rescore("coco_order", path)
    assert payload["metrics"]["seeds"] == [1, 2] and payload["headline"]["sd over seeds"] == pytest.approx(
        np.std([100.0, 50.0], ddof=1)
    )
    bad = tmp_path / "bad.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    bad.write_text("\n".join([*lines[:2], lines[2].replace("seed1/0_1", "0_1")]) + "\n", encoding="utf-8")
    with pytest.raises(ScoreFileError, match=r"bad\.jsonl, line 3: an Order case has an id 'seed<s>/"):
        rescore("coco_order", bad)


# ---------------------------------------------------------------------------------------------
# Bad files: one named error with the file and the line


def official_lines() -> list[str]:
    return [
        json.dumps({"label": f"{e}_c{j}_i{k}", "score": 0.25 * (j + k)})
        for e in range(2)
        for j in (0, 1)
        for k in (0, 1)
    ]


@pytest.mark.parametrize(
    ("replacement", "message"),
    [
        ('{"label": "1_c0_i1", "score": Infinity}', r"line 6: non-finite number Infinity"),
        ('{"label": "1_c0_i1", "score": -Infinity}', r"line 6: non-finite number -Infinity"),
        ('{"label": "1_c0_i1", "score": NaN}', r"line 6: non-finite number NaN"),
        ('{"label": "1_c0_i1", "score": 1e999}', r"line 6: non-finite number 1e999"),
        ('{"label": "1_c0_i1", "score": "0.5"}', r"line 6: score for 1_c0_i1 is not a finite number: '0\.5'"),
        ('{"label": "1_c0_i1", "score": 0.5', r"line 6: not valid JSON"),
        ('{"label": "1_c0_i0", "score": 0.5}', r"line 6: duplicate label 1_c0_i0"),
        ('{"label": "1_c0_i2", "score": 0.5}', r"line 6: expected a label '<id>_c<j>_i<k>', got '1_c0_i2'"),
    ],
)
def test_bad_official_winoground_lines(tmp_path: Path, replacement: str, message: str) -> None:
    lines = official_lines()
    lines[5] = replacement
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ScoreFileError, match=r"bad\.jsonl, " + message) as info:
        read_official_scores(path)
    assert (info.value.file, info.value.line) == (str(path), 6)


def test_invalid_utf8_names_file_line_and_column(tmp_path: Path) -> None:
    lines = [line.encode() for line in official_lines()]
    lines[2] = b'{"label": "0_c1_i0", "score": 0.25, "note": "caf\xe9"}'
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(
        ScoreFileError, match=r"latin1\.jsonl, line 3: not valid UTF-8 \(byte 0xe9 at column 49\)"
    ):
        read_official_scores(path)
    harness = tmp_path / "header.jsonl"  # also on the harness header, read for format detection
    harness.write_bytes(b'{"format": "nas-benchmark-scores", "scorer": "\xff"}\n')
    with pytest.raises(ScoreFileError, match=r"header\.jsonl, line 1: not valid UTF-8 \(byte 0xff"):
        score_from_file("sugarcrepe", None, harness)


def test_missing_labels_name_the_example_first_line(tmp_path: Path) -> None:
    path = tmp_path / "short.jsonl"
    path.write_text("\n".join(official_lines()[:7]) + "\n", encoding="utf-8")
    with pytest.raises(ScoreFileError, match=r"short\.jsonl, line 5: example 1 lacks labels \['1_c1_i1'\]"):
        read_official_scores(path)


def test_harness_file_with_a_non_finite_score(tmp_path: Path) -> None:
    path = tmp_path / "sc.jsonl"
    sc_cases = load_sugarcrepe(None, SWAP_OBJ, check_images=False)
    write_score_file(path, "sugarcrepe", sc_cases, {c.case_id: np.array([[1.0, 0.0]]) for c in sc_cases}, "s")
    lines = path.read_text(encoding="utf-8").splitlines()
    for token in ("Infinity", "-Infinity", "NaN"):
        entry = lines[3].replace('"scores": [[1.0, 0.0]]', f'"scores": [[{token}, 0.0]]')
        assert entry != lines[3]
        path.write_text("\n".join([*lines[:3], entry, *lines[4:]]) + "\n", encoding="utf-8")
        with pytest.raises(ScoreFileError, match=rf"sc\.jsonl, line 4: non-finite number {token}"):
            score_from_file("sugarcrepe", None, path, {"files": ["swap_obj"]})


def test_writers_refuse_non_finite_scores(tmp_path: Path) -> None:
    sc_cases = load_sugarcrepe(None, SWAP_OBJ, check_images=False)
    scores = {c.case_id: np.array([[1.0, 0.0]]) for c in sc_cases}
    scores["swap_obj/0"] = np.array([[np.inf, 0.0]])
    with pytest.raises(ScoreError, match=r"case 'swap_obj/0' a non-finite score \[\[inf, 0\.0\]\]"):
        write_score_file(tmp_path / "s.jsonl", "sugarcrepe", sc_cases, scores, "s")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"type": "foil"}, r"label '0_c' is a caption score but 'type' is 'foil'"),
        ({"id": 1}, r"label '0_c' is sample 0 but 'id' is 1"),
        (
            {"instrument": "existence"},
            r"label '0_c' is sample 0, whose instrument is 'actant-swap', but the line says 'existence'",
        ),
    ],
)
def test_fge_fields_that_contradict_the_label(tmp_path: Path, edit: dict, message: str) -> None:
    path = fge_file(tmp_path)
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[0] = json.dumps(json.loads(lines[0]) | edit)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ScoreFileError, match=r"valse\.fge\.jsonl, line 1: " + message) as info:
        score_from_file("valse", None, path)
    assert info.value.line == 1


def test_format_detection_and_mismatch(tmp_path: Path) -> None:
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text('\n{"image": 0, "text": 1, "score": 0.5}\n', encoding="utf-8")
    with pytest.raises(ScoreFileError, match=r"unknown\.jsonl, line 2: cannot tell the score-file format"):
        detect_format(unknown)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ScoreFileError, match=r"empty\.jsonl: the file is empty"):
        detect_format(empty)
    wino = write_official(tmp_path / "wino.jsonl", WINO_SCORES)
    with pytest.raises(ScoreFileError, match=r"valse does not read the 'winoground' score format \(inferred"):
        score_from_file("valse", None, wino)


# ---------------------------------------------------------------------------------------------
# The command line: exit status 2 and one line


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"label": "0_c0_i0", "score": Infinity}\n', "bad.jsonl, line 1: non-finite number Infinity"),
        (
            b'{"label": "0_c0_i0", "score": 1.0}\n{"label": "0_c0_i1", "score": NaN}\n',
            "bad.jsonl, line 2: non-finite number NaN",
        ),
        (
            b'{"label": "0_c0_i0", "score": 1.0}\n\xff\n',
            "bad.jsonl, line 2: not valid UTF-8 (byte 0xff at column 1)",
        ),
    ],
)
def test_cli_bad_file_exit_2_with_one_line(tmp_path: Path, capsys, content: bytes, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    code, out, err = run_cli(capsys, "winoground", path)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("nas score: error: ") and message in err
    assert "Traceback" not in err


def test_cli_fge_contradiction_and_missing_file(tmp_path: Path, capsys) -> None:
    path = fge_file(tmp_path)
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[3] = json.dumps(json.loads(lines[3]) | {"type": "caption"})  # "1_f" says caption
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, _, err = run_cli(capsys, "valse", path)
    assert code == 2
    assert err == (f"nas score: error: {path}, line 4: label '1_f' is a foil score but 'type' is 'caption'\n")
    code, _, err = run_cli(capsys, "winoground", tmp_path / "absent.jsonl")
    assert code == 2 and err == f"nas score: error: score file {tmp_path / 'absent.jsonl'} not found\n"
    code, _, err = run_cli(capsys, "valse", path, "--set", "match_treshold=0.5")
    assert code == 2 and "match_treshold" in err and err.count("\n") == 1


def test_cli_json_on_stdout(tmp_path: Path, capsys) -> None:
    path = write_official(tmp_path / "m.jsonl", WINO_SCORES)
    code, out, _ = run_cli(capsys, "winoground", path, "--out", "-", "--scorer", "mine")
    payload = json.loads(out)
    assert code == 0 and payload["scorer"] == "mine" and payload["format"] == "winoground"
    assert set(payload) == {
        "benchmark",
        "score_file",
        "format",
        "scorer",
        "annotations",
        "n_cases",
        "unit",
        "chance",
        "headline",
        "metrics",
        "config",
    }


def test_cli_bad_annotation_file_is_one_line_too(wino_root: Path, tmp_path: Path, capsys) -> None:
    examples = wino_root / "examples.jsonl"
    examples.write_bytes(examples.read_bytes().replace(b"caption zero of 1", b"caption z\xe9ro of 1"))
    path = write_official(tmp_path / "model.jsonl", WINO_SCORES)
    code, _, err = run_cli(capsys, "winoground", path, "--annotations", wino_root)
    assert code == 2 and err.count("\n") == 1
    assert f"{examples}: not valid UTF-8 (byte offset" in err
