"""`nas` — a thin command line over the pipeline stages and a few inspection tools.

Every stage subcommand hands its arguments to the stage's Sacred experiment in `experiments/`, so
`nas pretrain --stage pretrain_stage1 --variant nas --run seed=0 --set pretrain_stage1.train.epochs=2` and
the DVC command `python -m experiments.pretrain --stage pretrain_stage1 --variant nas --run seed=0 ...` are the
same run.
An experiment module with several stages (pretrain, mug, uta) is one subcommand with `--stage`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from nas.recipes.commands import STAGE_COMMANDS
from nas.recipes.stage import parse_stage_args

# Pipeline stages: subcommand -> its StageCommand (experiment module, stages, `--stage` choices). Kept
# in nas.recipes.commands, which imports no torch: `nas <stage command> --help` is answered before the
# experiment module (torch, timm, transformers: seconds) is imported.
STAGES = STAGE_COMMANDS


def _stage_help(name: str) -> str:
    command = STAGES[name]
    if len(command.stages) == 1:
        return command.help
    return f"{command.help} (--stage {' | '.join(command.stages)})"


def _config_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nas config",
        description="Print the resolved params of a variant, checked as a stage checks them (every key of "
        "every section); exit 2 with one error line on an unknown key or a wrong value.",
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--variant", default=None, help="a key of `variants` in the params file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one param (dotted key, YAML value); unknown keys are errors",
    )
    args = parser.parse_args(argv)
    # The stages' own reading of the params (nas.recipes.stage registers the sections that the
    # experiment modules type), so `nas config` accepts and refuses exactly what a stage does.
    common = importlib.import_module("nas.recipes.stage")
    try:
        cfg = common.load_config(args.params, args.variant, args.overrides)
    except common.ConfigError as exc:
        return common.report_user_error("nas config", exc)
    print(json.dumps(cfg, indent=2, sort_keys=True))
    return 0


def _models_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="nas models", description="List the registered model entrypoints.")
    parser.parse_args(argv)
    from nas.models.registry import list_models

    for name in list_models():
        print(name)
    return 0


def _score_command(argv: Sequence[str]) -> int:
    from nas.evaluation.benchmarks import rescore
    from nas.evaluation.benchmarks.runner import BENCHMARKS, SCORE_FORMATS

    parser = argparse.ArgumentParser(
        prog="nas score",
        description="Rescore a per-example score file: print a benchmark's official figures (the\n"
        "report's headline figures, official tie rules), optionally as JSON. No model, no image.",
        epilog=rescore.help_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "benchmark", choices=list(BENCHMARKS), metavar="BENCHMARK", help="one of: %(choices)s"
    )
    parser.add_argument("score_file", metavar="SCORE_FILE", help="the per-example score file")
    parser.add_argument(
        "--format",
        dest="file_format",
        choices=["auto", *SCORE_FORMATS],
        default="auto",
        help="score-file format (default: inferred from the first line)",
    )
    parser.add_argument(
        "--annotations",
        "--benchmark-dir",
        metavar="PATH",
        help="the benchmark's annotation file or its folder (see below; VALSE and SugarCrepe default "
        "to the shipped copies)",
    )
    parser.add_argument(
        "--probes",
        metavar="DIR",
        help="a probe folder (data/probes): root, config and text tools from its manifest, as the "
        "evaluate stage reads them (for the pipeline's own score files)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a key of the benchmark's config, e.g. match_threshold=0.5 (VALSE p_c/p_f of an ITM "
        "probability), exclude_relations=false (VG-Relation); repeatable",
    )
    parser.add_argument("--scorer", help="scorer name to report (default: the header's, else the file stem)")
    parser.add_argument(
        "--out", metavar="JSON", help="also write the figures as JSON there ('-': JSON on stdout, no summary)"
    )
    args = parser.parse_args(argv)
    try:
        payload = rescore.rescore(
            args.benchmark,
            args.score_file,
            file_format=args.file_format,
            annotations=args.annotations,
            probes=args.probes,
            overrides=args.overrides,
            scorer_name=args.scorer,
        )
        text = json.dumps(payload, indent=2, ensure_ascii=False) + "\n"
        if args.out == "-":
            sys.stdout.write(text)
            return 0
        print("\n".join(rescore.summary_lines(payload)))
        if args.out:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
            print(f"wrote {out}")
    except rescore.EXPECTED_ERRORS as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"nas score: error: {message}", file=sys.stderr)
        return 2
    return 0


def _profile_command(argv: Sequence[str]) -> int:
    from nas.config import profiles

    parser = argparse.ArgumentParser(
        prog="nas profile",
        description="Profiles: the root is the embedded default; profiles/<name>/ holds another params.yaml "
        "and a dvc.yaml that differs from the root's in `code` only. Run one with "
        "`cd profiles/<name> && dvc repro`: its outputs stay in its folder.",
    )
    sub = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    sub.add_parser("list", help="the profiles of this repository")
    new = sub.add_parser("new", help="profiles/NAME/ from another profile's params (default: embedded)")
    new.add_argument("name", metavar="NAME")
    new.add_argument(
        "--from", dest="source", default=profiles.EMBEDDED, help="a profile (default: %(default)s)"
    )
    sync = sub.add_parser("sync", help="rewrite every profile's dvc.yaml from the root dvc.yaml")
    sync.add_argument("--check", action="store_true", help="change nothing; exit 1 if a profile is stale")
    args = parser.parse_args(argv)
    try:
        if args.action == "list":
            print("\n".join(profiles.list_profiles()))
        elif args.action == "new":
            folder = profiles.new_profile(args.name, args.source)
            print(
                f"wrote {folder}/params.yaml (from {args.source}) and {folder}/dvc.yaml; "
                f"edit the params, then `cd {folder} && dvc repro`"
            )
        else:
            changed = profiles.sync_profiles(check=args.check)
            verb = "stale" if args.check else "rewrote"
            print(f"{verb}: {', '.join(changed)}" if changed else "every profile's dvc.yaml is up to date")
            return 1 if (args.check and changed) else 0
    except (profiles.ProfileError, OSError) as exc:
        print(f"nas profile: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _bench_command(argv: Sequence[str]) -> int:
    # The benchmarks live in the checkout (benchmarks/, beside nas/), not in the installed package.
    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "__main__.py").is_file():
        print(
            f"nas bench: error: no benchmarks/ beside {root / 'nas'} (a source checkout has it)",
            file=sys.stderr,
        )
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks.__main__ import main as bench_main

    return bench_main(list(argv), prog="nas bench")


def _audit_command(argv: Sequence[str]) -> int:
    import nas.recipes  # noqa: F401  (registers the companion recipes' cards with the audit)
    from nas.reporting.audit import main as audit_main

    return audit_main(list(argv))


TOOLS = {
    "audit": (
        _audit_command,
        "compare a run's (or a params file's) hyperparameters with the paper card; exit 1 on an "
        "unexplained deviation",
    ),
    "bench": (
        _bench_command,
        "run the step benchmarks (ALBEF, NVA, MUG, UTA, paper size, evaluation) and print a table of "
        "ratios; `nas bench startup` times each stage process's start-up",
    ),
    "config": (_config_command, "print the resolved params of a variant (params.yaml + overlay + --set)"),
    "models": (_models_command, "list the registered model entrypoints"),
    "profile": (
        _profile_command,
        "list, create or sync profiles (profiles/<name>/: another scale, its own outputs)",
    ),
    "score": (
        _score_command,
        "rescore a per-example score file (harness, official Winoground, FGE VALSE) and print the "
        "official figures; exit 2 on a bad file",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="nas",
        description="nas-harness: reproduce NAS (AAAI 2025) and its baselines. "
        "Run `nas <command> --help` for the options of each command.",
        epilog=f"{', '.join(STAGES)}: the pipeline's stages (dvc.yaml runs the same code); "
        f"{', '.join(TOOLS)}: tools to inspect params, models, runs and score files.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in STAGES:
        sub.add_parser(name, help=_stage_help(name), add_help=False)
    for name, (_, text) in TOOLS.items():
        sub.add_parser(name, help=text, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    command, rest = argv[0], argv[1:]
    if command in TOOLS:
        return TOOLS[command][0](rest)
    if command not in STAGES:
        parser.error(f"unknown command {command!r}")
    # --help, usage errors and a wrong --stage are answered here, before the stage's heavy imports; the
    # module's main() parses the same arguments with the same parser.
    parse_stage_args(command, rest)
    module = importlib.import_module(STAGES[command].module)
    module.main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
