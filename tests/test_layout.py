"""The tree's shape (issue 14): stage scripts are thin and import only the library; tests import only
the library; every stage dvc.yaml runs is a script of experiments/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A stage script reads params, calls the library, records with Sacred (nas.recipes.stage.run_stage):
# a docstring and a few lines. Anything longer is library code in the wrong place.
MAX_SCRIPT_LINES = 40


def imported_modules(path: Path) -> list[tuple[str, int]]:
    """(module, line) of every import in `path`, module level and inside functions, plus string targets
    handed to importlib.import_module."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
            if node.module == "experiments":
                found += [(f"experiments.{alias.name}", node.lineno) for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.args[0].value, node.lineno))
    return found


def scripts() -> list[Path]:
    return sorted(p for p in (ROOT / "experiments").glob("*.py") if p.name != "__init__.py")


def test_stage_scripts_are_thin_and_import_only_the_library():
    problems = []
    for path in scripts():
        lines = len(path.read_text().splitlines())
        if lines > MAX_SCRIPT_LINES:
            problems.append(f"{path.name}: {lines} lines (at most {MAX_SCRIPT_LINES}: move the code to nas/)")
        for module, line in imported_modules(path):
            if module.split(".")[0] == "experiments":
                problems.append(
                    f"{path.name}:{line} imports {module} (stage scripts never import one another)"
                )
            elif module.split(".")[0] not in ("nas", "__future__"):
                problems.append(f"{path.name}:{line} imports {module} (a script calls the library only)")
    assert not problems, "\n".join(problems)


def test_tests_and_the_library_never_import_a_stage_script():
    offenders = []
    for folder in ("tests", "nas", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == Path(__file__).resolve():
                continue
            for module, line in imported_modules(path):
                if module == "experiments" or module.startswith("experiments."):
                    offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not offenders, "import nas.recipes.* instead:\n" + "\n".join(offenders)


def test_every_stage_command_of_dvc_yaml_is_a_script_of_experiments():
    commands = re.findall(r"cmd: python -m (experiments\.\w+)", (ROOT / "dvc.yaml").read_text())
    assert commands
    for module in set(commands):
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module
