"""Sacred records: killed runs do not stay RUNNING forever; every record names the code, its git state
and the versions of the packages that shape a result."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from nas.recipes.stage import RESULT_PACKAGES, mark_interrupted_runs, source_state


def _record(folder, status, *, pid=None, heartbeat=None):
    folder.mkdir(parents=True)
    entry = {"status": status, "host": {"hostname": socket.gethostname()}, "heartbeat": heartbeat}
    (folder / "run.json").write_text(json.dumps(entry))
    if pid is not None:
        (folder / "info.json").write_text(json.dumps({"pid": pid}))


def test_killed_runs_are_marked_interrupted_and_live_ones_are_left(tmp_path):
    dead = int(
        subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout
    )
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    _record(tmp_path / "1", "RUNNING", pid=dead)
    _record(tmp_path / "2", "RUNNING", pid=os.getpid())  # alive (this process)
    _record(tmp_path / "3", "COMPLETED", pid=dead)
    _record(
        tmp_path / "4", "RUNNING", heartbeat=(now - datetime.timedelta(hours=1)).isoformat()
    )  # no pid, stale
    _record(tmp_path / "5", "RUNNING", heartbeat=now.isoformat())  # no pid, fresh heartbeat
    marked = mark_interrupted_runs(tmp_path)
    assert sorted(p.name for p in marked) == ["1", "4"]
    status = {p.name: json.loads((p / "run.json").read_text())["status"] for p in tmp_path.iterdir()}
    assert status == {
        "1": "INTERRUPTED",
        "2": "RUNNING",
        "3": "COMPLETED",
        "4": "INTERRUPTED",
        "5": "RUNNING",
    }
    assert "marked INTERRUPTED" in json.loads((tmp_path / "1" / "run.json").read_text())["fail_trace"][0]
    assert mark_interrupted_runs(tmp_path / "missing") == []


# ---- what a run record says about the code and the environment ------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def _git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
    }
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=True
    )
    return done.stdout


def _repo(tmp_path: Path) -> Path:
    """A committed pipeline repository: sources, params, dvc.yaml, dvc.lock and a metrics file."""
    repo = tmp_path / "repo"
    for path, text in {
        "nas/model.py": "A = 1\n",
        "experiments/stage.py": "B = 1\n",
        "params.yaml": "seed: 0\n",
        "dvc.yaml": "stages: {}\n",
        "dvc.lock": "schema: '2.0'\n",
        "metrics/data.json": "{}\n",
        "README.md": "x\n",
    }.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "init")
    return repo


def test_dirty_means_the_sources_differ_from_the_commit_not_dvc_outputs(tmp_path):
    repo = _repo(tmp_path)
    commit = _git(repo, "rev-parse", "HEAD").strip()
    state = source_state(repo, repo / "params.yaml")
    assert state["commit"] == commit and state["dirty"] is False
    assert state["changed"] == [] and state["untracked"] == []

    # what `dvc repro` does to a clean checkout: dvc.lock and tracked metrics rewritten, outputs added
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {data: {}}\n")
    (repo / "metrics/data.json").write_text('{"n": 1}\n')
    (repo / "data").mkdir()
    (repo / "data/out.txt").write_text("x")
    (repo / "README.md").write_text("y\n")  # not a source either
    state = source_state(repo, repo / "params.yaml")
    assert state["dirty"] is False and state["changed"] == [] and state["untracked"] == []

    # untracked files in the source folders are listed, but do not make the tree dirty
    (repo / "nas/extra.py").write_text("C = 1\n")
    state = source_state(repo, repo / "params.yaml")
    assert state["dirty"] is False and state["untracked"] == ["nas/extra.py"] and state["n_untracked"] == 1

    # a changed, staged or renamed source does
    (repo / "nas/model.py").write_text("A = 2\n")
    (repo / "params.yaml").write_text("seed: 1\n")
    _git(repo, "mv", "experiments/stage.py", "experiments/renamed.py")
    state = source_state(repo, repo / "params.yaml")
    assert state["dirty"] is True and state["n_changed"] == 3
    assert sorted(state["changed"]) == ["M nas/model.py", "M params.yaml", "R experiments/renamed.py"]


def test_a_params_file_elsewhere_is_a_source_and_outside_the_repository_is_named(tmp_path):
    repo = _repo(tmp_path)
    (repo / "profiles").mkdir()
    (repo / "profiles/big.yaml").write_text("seed: 0\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "profile")
    (repo / "profiles/big.yaml").write_text("seed: 2\n")
    state = source_state(repo, repo / "profiles/big.yaml")
    assert "profiles/big.yaml" in state["sources"] and state["changed"] == ["M profiles/big.yaml"]
    outside = tmp_path / "mine.yaml"
    outside.write_text("seed: 0\n")
    state = source_state(repo, outside)
    assert state["dirty"] is False and state["params_file_outside_repository"] == str(outside.resolve())


def test_outside_a_repository_or_before_the_first_commit_dirty_is_unknown(tmp_path):
    (tmp_path / "plain").mkdir()
    state = source_state(tmp_path / "plain")
    assert state["commit"] is None and state["dirty"] is None and "git" in state["reason"]
    (tmp_path / "fresh").mkdir()
    _git(tmp_path / "fresh", "init", "-q")
    state = source_state(tmp_path / "fresh")
    assert state["commit"] is None and state["dirty"] is None and "no commit" in state["reason"]


def test_a_stage_run_record_names_versions_code_hash_and_source_state(tmp_path):
    """`nas data` on a tiny data set: run.json holds every result-shaping package's version (Sacred's
    experiment.dependencies), nas/ among the sources, the code hash, the git state of the sources (Sacred's
    repositories entry carries the same dirty flag) and the DVC stage with dvc.lock's hash."""
    from importlib import metadata

    from nas.config.stages import code_digest

    (tmp_path / "params.yaml").write_text(  # a tiny data set and probes; every other section at its defaults
        "seed: 0\ndata:\n  root: data/synthetic\n  synthetic: {n_train: 20, n_val: 6, n_test: 6}\n"
        "  probes: {vg_relation: 2, vg_attribution: 2, order_images: 2, winoground: 2,\n"
        "           valse_per_instrument: 2, sugarcrepe_per_file: 2}\n"
    )
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    argv = [sys.executable, "-m", "nas.cli", "data", "--runs-dir", "runs"]
    env = {**os.environ, "DVC_STAGE": "data", "DVC_ROOT": str(tmp_path), "OMP_NUM_THREADS": "2"}
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "runs/sacred/data/all").glob("[0-9]*")
    entry = json.loads((run_dir / "run.json").read_text())
    assert entry["status"] == "COMPLETED"

    dependencies = dict(d.split("==") for d in entry["experiment"]["dependencies"])
    for name in RESULT_PACKAGES:
        assert dependencies[name] == metadata.version(name), name
    assert {"torch", "timm", "transformers", "pytorch-ignite", "open_clip_torch"} <= set(dependencies)

    sources = [path for path, _ in entry["experiment"]["sources"]]
    assert "experiments/data.py" in sources and "nas/config/stages.py" in sources
    assert all((run_dir.parent / stored).is_file() for _, stored in entry["experiment"]["sources"])

    provenance = entry["meta"]["provenance"]
    assert provenance["code"]["nas_sha256"] == code_digest()
    assert (
        provenance["params"]["sha256"] == hashlib.sha256((tmp_path / "params.yaml").read_bytes()).hexdigest()
    )
    assert provenance["dvc"] == {
        "stage": "data",
        "lock_sha256": hashlib.sha256(b"schema: '2.0'\n").hexdigest(),
    }
    git = provenance["git"]
    expected = source_state(ROOT, tmp_path / "params.yaml")
    assert git["commit"] == expected["commit"] and git["dirty"] == expected["dirty"]
    assert isinstance(git["dirty"], bool) == (git["commit"] is not None)
    if git["commit"] is not None:
        assert entry["experiment"]["repositories"] == [
            {"url": git["url"], "commit": git["commit"], "dirty": git["dirty"]}
        ]
        assert git["params_file_outside_repository"] == str((tmp_path / "params.yaml").resolve())
    host = entry["host"]
    assert host["ENV"]["OMP_NUM_THREADS"] == "2"
    assert host["torch"]["num_threads"] >= 1 and "cpu_capability" in host["torch"]


def test_the_experiment_records_local_versions_sources_and_the_repository_state():
    """Sacred's add_package_dependency refuses a local version (a CUDA build's `2.5.1+cu121`); the record
    keeps it. The repositories entry is the record's, not GitPython's whole-tree flag."""
    from nas.recipes.stage import _experiment

    record = {
        "packages": {"torch": "2.5.1+cu121", "timm": "1.0.9", "missing-package": None},
        "repositories": [{"url": "/repo", "commit": "0" * 40, "dirty": False}],
        "provenance": {},
    }
    info = _experiment("unit", record).get_experiment_info()
    assert {"torch==2.5.1+cu121", "timm==1.0.9"} <= set(info["dependencies"])
    assert not any(d.startswith("missing-package") for d in info["dependencies"])
    assert info["repositories"] == record["repositories"]
    sources = {path for path, _ in info["sources"]}
    assert {
        "experiments/pretrain.py",
        "nas/recipes/stage.py",
        "nas/cli.py",
        "nas/config/stages.py",
    } <= sources


def test_torch_host_info_names_threads_kernels_and_devices(monkeypatch):
    import torch

    from nas.recipes.stage import torch_host_info

    info = torch_host_info()
    assert info["num_threads"] == torch.get_num_threads() and info["cuda"] == torch.version.cuda
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"GPU {i}")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90100)
    info = torch_host_info()
    assert info["devices"] == ["GPU 0", "GPU 1"] and info["cudnn"] == 90100


def test_a_stage_that_loads_torch_late_records_it_and_seeds_it_as_sacred_did(tmp_path):
    """The second start of a stage reads its params check back (runs/checked-params) and so reaches its
    work without torch: `host.torch` is still recorded (when the stage ends), and torch, imported by the
    work, is seeded with the run's seed as Sacred seeds a torch loaded at the start."""
    (tmp_path / "params.yaml").write_text(
        "seed: 7\ndata:\n  root: data/synthetic\n  synthetic: {n_train: 20, n_val: 6, n_test: 6}\n"
        "  probes: {vg_relation: 2, vg_attribution: 2, order_images: 2, winoground: 2,\n"
        "           valse_per_instrument: 2, sugarcrepe_per_file: 2}\n"
    )
    argv = [sys.executable, "-m", "nas.cli", "data", "--runs-dir", "runs"]
    for _ in range(2):
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "runs/checked-params").glob("*.json"))) == 1
    entries = [
        json.loads(p.read_text()) for p in sorted((tmp_path / "runs/sacred/data/all").glob("*/run.json"))
    ]
    assert [e["status"] for e in entries] == ["COMPLETED", "COMPLETED"]
    for entry in entries:
        assert entry["host"]["torch"]["num_threads"] >= 1 and "cpu_capability" in entry["host"]["torch"]

    code = (
        "from nas.recipes.stage import _after_import, _torch_seeder\n"
        "hook = _after_import('torch', _torch_seeder(7))\n"
        "import ignite.distributed\n"  # torch imported by another module's import
        "import torch, sys\n"
        "print(torch.rand(3).tolist(), type(torch.__spec__.loader).__name__, hook in sys.meta_path)\n"
        "torch.manual_seed(7)\n"
        "print(torch.rand(3).tolist())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    late, eager = done.stdout.splitlines()
    assert late.endswith(" SourceFileLoader False") and late.split("] ")[0] + "]" == eager
