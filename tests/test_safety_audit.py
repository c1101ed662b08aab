"""Every call that can run code or write outside its folder, found statically, reviewed one by one.

The Python files under nas/, experiments/, benchmarks/ and scripts/ are parsed with `ast` (nothing is
imported) and every call of these kinds is listed:

  torch_load   torch.load: unpickles; must pass `weights_only=True` as a literal keyword
  unpickle     pickle.load(s) / Unpickler, marshal.load(s), shelve.open (and dill, cloudpickle, joblib);
               numpy.load(allow_pickle=True) is forbidden outright
  yaml         yaml.load & co. are forbidden outright: only yaml.safe_load(_all) parses untrusted YAML
  archive      tarfile.open / TarFile, shutil.unpack_archive, and any `.extractall(...)` / `.extract(...)`
               (TarFile and ZipFile extraction: a member may point outside the target folder)
  process      subprocess.run / Popen / call / check_call / check_output, os.exec* / spawn*: must take
               an argument list, never `shell=True`, never a string command; os.system, os.popen and
               subprocess.getoutput / getstatusoutput (always a shell string) are forbidden outright
  eval         eval / exec

A site is (file, enclosing function, call). Each one must be in ALLOWED with a one-line reason; a site
that is not fails CI, and so does an ALLOWED entry that no longer matches a site (the list stays true).
Forbidden forms (torch.load without weights_only=True, shell=True, a string command, yaml.load,
os.system, numpy.load(allow_pickle=True)) fail even when allow-listed.

To add a site: review it, then add `(file, function, call): "reason"` to ALLOWED, the key exactly as
the failure message prints it. Names are resolved through the file's imports (`import subprocess as
sp`, `from torch import load`); a method call on an object (`tar.extractall`) is named by its source
text, so renaming the variable renames the site.
"""

from __future__ import annotations

import ast
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("nas", "experiments", "benchmarks", "scripts")

# (file relative to the repository, enclosing function's qualified name or "<module>", call) -> reason
ALLOWED: dict[tuple[str, str, str], str] = {
    # ---- torch.load (each with weights_only=True) ----
    ("nas/engine/checkpoint.py", "read_checkpoint", "torch.load"): (
        "the one checkpoint reader of the engine; weights_only=True, onto the CPU"
    ),
    ("nas/engine/parity.py", "record_training", "torch.load"): (
        "reads back the record its own spawned workers wrote; weights_only=True"
    ),
    ("nas/models/pretrained.py", "read_state_dict", "torch.load"): (
        "downloaded third-party weights; weights_only=True, a file with Python objects is refused by name"
    ),
    ("nas/models/clip_teacher.py", "load_teacher", "torch.load"): (
        "the UTA teacher's weights (ours or an open_clip checkpoint); weights_only=True"
    ),
    ("nas/models/vd_build.py", "load_initial_dictionary", "torch.load"): (
        "the build_vd stage's vd_init.pt; weights_only=True, format and shapes checked"
    ),
    # ---- archives ----
    ("nas/data/shards.py", "index_shard", "tarfile.open"): (
        "indexes a webdataset shard read-only (mode 'r:', offsets and captions); never extracts to disk"
    ),
    ("nas/data/download.py", "extract", "tarfile.open"): (
        "opens a downloaded tar for `_tar_members` (every member checked) and `_extract_tar`"
    ),
    ("nas/data/download.py", "_extract_tar", "tar.extractall"): (
        "members pre-checked (no absolute path, '..', outside link, device); tarfile's data filter "
        "(required: refused where Python lacks it); bytes counted against a limit; into a temporary folder, moved into place after"
    ),
    # ---- processes ----
    ("nas/data/download.py", "run_img2dataset", "subprocess.run"): (
        "img2dataset with an argument list built by img2dataset_command; no shell"
    ),
    ("nas/recipes/stage.py", "_git", "subprocess.run"): (
        "read-only git queries (rev-parse, status, config): a literal argument list, --no-optional-locks, "
        "a timeout, no shell"
    ),
    ("benchmarks/reproducibility.py", "run_setting", "subprocess.run"): (
        "developer benchmark re-running its own file as a worker ([sys.executable, __file__, ...]); no shell"
    ),
    ("benchmarks/__main__.py", "run_worker", "subprocess.run"): (
        "the benchmark entry point's worker: [sys.executable, -c, <fixed source>, paths], a timeout, no shell"
    ),
    ("benchmarks/evaluate_profile.py", "compare", "subprocess.run"): (
        "developer benchmark re-running its own module on another tree ([sys.executable, -m, ...] built here); no shell"
    ),
    ("benchmarks/machine.py", "git_commit", "subprocess.run"): (
        "read-only `git rev-parse HEAD`: a literal argument list, a timeout, no shell"
    ),
    ("benchmarks/machine.py", "add_worktree", "subprocess.run"): (
        "`git worktree add --detach` of the revision the user asked to compare, into a new temporary folder"
    ),
    ("benchmarks/machine.py", "remove_worktree", "subprocess.run"): (
        "`git worktree remove` of the temporary folder add_worktree made"
    ),
    ("benchmarks/startup.py", "time_process", "subprocess.run"): (
        "starts one stage process ([sys.executable, -c, <fixed bootstrap>, module, args]) to time its start-up"
    ),
    ("benchmarks/startup.py", "time_bare_python", "subprocess.run"): (
        "[sys.executable, -c, pass]: the interpreter's own start-up, the baseline"
    ),
}

TORCH_LOAD = {"torch.load", "torch.serialization.load"}
UNPICKLE = {
    f"{module}.{name}"
    for module in ("pickle", "_pickle", "cPickle", "dill", "cloudpickle")
    for name in ("load", "loads", "Unpickler")
} | {"marshal.load", "marshal.loads", "shelve.open", "joblib.load"}
YAML_FORBIDDEN = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}
ARCHIVE = {"tarfile.open", "tarfile.TarFile", "tarfile.TarFile.open", "shutil.unpack_archive"}
ARCHIVE_METHODS = {"extractall", "extract"}
PROCESS = {f"subprocess.{name}" for name in ("run", "Popen", "call", "check_call", "check_output")} | {
    "asyncio.create_subprocess_exec",
    "pty.spawn",
}
SHELL_ONLY = {
    "os.system",
    "os.popen",
    "subprocess.getoutput",
    "subprocess.getstatusoutput",
    "asyncio.create_subprocess_shell",
}
OS_PROCESS_PREFIXES = ("os.exec", "os.spawn", "os.posix_spawn")
EVAL = {"eval", "exec", "builtins.eval", "builtins.exec"}


@dataclass
class Site:
    file: str
    line: int
    function: str
    call: str
    kind: str
    problems: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.file, self.function, self.call)

    def where(self) -> str:
        return f"{self.file}:{self.line} ({self.function})"


def _aliases(tree: ast.AST) -> dict[str, str]:
    """{local name: dotted name} of every import in the file (function-level imports included)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    root = alias.name.split(".")[0]
                    names[root] = root
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(func: ast.expr, aliases: dict[str, str]) -> str | None:
    """`a.b.c` of a call's function with the root resolved through the imports; None when the callee
    is not a plain name or attribute chain (a call result, a subscript)."""
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return None
    return ".".join([aliases.get(func.id, func.id), *reversed(parts)])


def _is_false(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value in (False, None, 0)


def _is_string_command(node: ast.expr) -> bool:
    """A command that is a string: a literal, an f-string, `"..." + x`, `"..." % x`, `"...".format()`."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (str, bytes))
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp):
        return _is_string_command(node.left) or _is_string_command(node.right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        return _is_string_command(node.func.value)
    return False


def _classify(call: ast.Call, name: str | None, method: str | None) -> tuple[str, list[str]] | None:
    """(kind, problems) of a call that is audited, None otherwise."""
    keywords = {kw.arg: kw.value for kw in call.keywords if kw.arg is not None}
    splat = any(kw.arg is None for kw in call.keywords)
    if name in TORCH_LOAD:
        value = keywords.get("weights_only")
        if not (isinstance(value, ast.Constant) and value.value is True):
            return "torch_load", [
                "torch.load without a literal `weights_only=True` can run arbitrary code from the file: "
                "pass weights_only=True (store tensors, dicts, lists and numbers only)"
            ]
        return "torch_load", []
    if name in UNPICKLE:
        return "unpickle", []
    if name == "numpy.load" and not _is_false(keywords.get("allow_pickle", ast.Constant(False))):
        return "unpickle", ["numpy.load(allow_pickle=True) unpickles: save arrays, not objects"]
    if name and name.startswith("yaml."):
        if name.rsplit(".", 1)[1] in YAML_FORBIDDEN:
            return "yaml", [f"{name} can construct arbitrary Python objects: use yaml.safe_load"]
        return None
    if name in ARCHIVE or method in ARCHIVE_METHODS:
        return "archive", []
    if name in SHELL_ONLY:
        return "process", [
            f"{name} runs a shell command string: use subprocess.run([...argument list...], check=True)"
        ]
    if name in PROCESS or (name and name.startswith(OS_PROCESS_PREFIXES)):
        problems = []
        shell = keywords.get("shell")
        if shell is not None and not _is_false(shell):
            problems.append("shell=True: pass an argument list and drop shell=True")
        elif splat:
            problems.append("**kwargs may carry shell=True: pass the keywords explicitly")
        command = call.args[0] if call.args else keywords.get("args")
        if command is not None and _is_string_command(command):
            problems.append("a string command: pass an argument list (shlex.split it once, by hand)")
        return "process", problems
    if name in EVAL:
        return "eval", []
    return None


class _Finder(ast.NodeVisitor):
    def __init__(self, file: str, aliases: dict[str, str]) -> None:
        self.file, self.aliases = file, aliases
        self.scope: list[str] = []
        self.sites: list[Site] = []

    def _scoped(self, node: ast.AST, name: str) -> None:
        self.scope.append(name)
        self.generic_visit(node)
        self.scope.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._scoped(node, node.name)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._scoped(node, node.name)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._scoped(node, node.name)

    def visit_Call(self, node: ast.Call) -> None:
        name = _dotted(node.func, self.aliases)
        method = node.func.attr if isinstance(node.func, ast.Attribute) else None
        found = _classify(node, name, method)
        if found is not None:
            kind, problems = found
            call = name or ast.unparse(node.func)
            function = ".".join(self.scope) or "<module>"
            self.sites.append(Site(self.file, node.lineno, function, call, kind, problems))
        self.generic_visit(node)


def scan_source(source: str, file: str = "<string>") -> list[Site]:
    with warnings.catch_warnings():  # invalid escapes in a scanned file are not this test's business
        warnings.simplefilter("ignore")
        tree = ast.parse(source, filename=file)
    finder = _Finder(file, _aliases(tree))
    finder.visit(tree)
    return finder.sites


def python_files() -> list[Path]:
    files = []
    for folder in SCANNED:
        base = ROOT / folder
        if base.is_dir():
            files += [p for p in base.rglob("*.py") if "__pycache__" not in p.relative_to(base).parts]
    return sorted(files)


def scan_repository() -> tuple[list[Site], list[str]]:
    """(every audited site, files that do not parse)."""
    sites, broken = [], []
    for path in python_files():
        rel = path.relative_to(ROOT).as_posix()
        try:
            sites += scan_source(path.read_text(encoding="utf-8"), rel)
        except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
            broken.append(f"{rel}: {type(exc).__name__}: {exc}")
    return sites, broken


@pytest.fixture(scope="module")
def scanned() -> list[Site]:
    sites, broken = scan_repository()
    assert not broken, "files the safety audit cannot parse (so cannot check):\n" + "\n".join(broken)
    return sites


def _key_text(key: tuple[str, str, str]) -> str:
    return f'("{key[0]}", "{key[1]}", "{key[2]}")'


def test_the_scan_finds_python_files():
    files = python_files()
    assert any(p.name == "checkpoint.py" for p in files) and len(files) > 50


def test_no_forbidden_call_form(scanned):
    bad = [f"{site.where()}: {site.call}: {problem}" for site in scanned for problem in site.problems]
    assert not bad, "unsafe calls (allow-listing does not excuse these):\n" + "\n".join(bad)


def test_every_site_is_reviewed(scanned):
    new = [site for site in scanned if site.key not in ALLOWED]
    assert not new, (
        "unreviewed unsafe-call sites; review each, then add it with a one-line reason to ALLOWED in "
        "tests/test_safety_audit.py (or remove the call):\n"
        + "\n".join(
            f"{site.where()}: {site.kind} call {site.call}\n    {_key_text(site.key)}: ..." for site in new
        )
    )


def test_no_stale_allow_list_entry(scanned):
    present = {site.key for site in scanned}
    stale = [key for key in ALLOWED if key not in present]
    assert not stale, (
        "ALLOWED entries that match no call any more (the call moved, was renamed or removed): update "
        "or delete them in tests/test_safety_audit.py:\n" + "\n".join(_key_text(key) for key in stale)
    )


def test_every_reason_is_one_line():
    for key, reason in ALLOWED.items():
        assert reason.strip() and "\n" not in reason, f"{_key_text(key)}: give a one-line reason"


# ---- the scanner itself --------------------------------------------------------------------------


def _one(source: str) -> Site:
    sites = scan_source(source)
    assert len(sites) == 1, sites
    return sites[0]


def test_torch_load_needs_a_literal_weights_only_true():
    assert _one("import torch\ntorch.load(p, weights_only=True)").problems == []
    for call in ("torch.load(p)", "torch.load(p, weights_only=False)", "torch.load(p, weights_only=flag)"):
        assert _one(f"import torch\n{call}").problems, call
    site = _one("from torch import load as L\ndef f():\n    L(p, **kw)\n")
    assert (site.call, site.function, site.problems != []) == ("torch.load", "f", True)


def test_processes_need_an_argument_list_and_no_shell():
    assert _one("import subprocess\nsubprocess.run(['git', 'status'], check=True)").problems == []
    assert _one("import subprocess as sp\nsp.run(argv)").problems == []  # reviewed by hand
    for call in (
        "subprocess.run('git status')",
        "subprocess.check_output(f'ls {d}')",
        "subprocess.Popen('ls ' + d)",
        "subprocess.call(['ls'], shell=True)",
        "subprocess.run(args='ls')",
        "subprocess.getoutput(['ls'])",
    ):
        assert _one(f"import subprocess\n{call}").problems, call
    assert _one("import os\nos.system('ls')").problems
    assert _one("from os import popen\npopen(cmd)").problems
    assert scan_source("import subprocess\ntry:\n    pass\nexcept subprocess.TimeoutExpired:\n    pass") == []


def test_other_kinds_and_names():
    assert _one("import yaml\nyaml.load(f, Loader=yaml.SafeLoader)").problems
    assert scan_source("import yaml\nyaml.safe_load(f)") == []
    assert _one("import pickle\npickle.loads(b)").kind == "unpickle"
    assert _one("import marshal\nmarshal.load(f)").kind == "unpickle"
    assert _one("import numpy as np\nnp.load(f, allow_pickle=True)").problems
    assert scan_source("import numpy as np\nnp.load(f)") == []
    site = _one("class A:\n    def m(self, zf):\n        zf.extractall(d)\n")
    assert (site.kind, site.function, site.call) == ("archive", "A.m", "zf.extractall")
    assert _one("import tarfile\nwith tarfile.open(p) as t:\n    pass").kind == "archive"
    assert _one("eval('1')").kind == "eval"
    assert scan_source("model.eval()\nnp.empty(3)\nx.load(f)") == []  # methods of other names
