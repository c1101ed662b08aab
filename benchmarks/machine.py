"""What a benchmark ran on: CPU model, cores, torch threads and version, GPU (if any), load."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU features that pick torch's kernels (bf16 included)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return []
    for line in cpuinfo.read_text(errors="replace").splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
            return [flag for flag in wanted if flag in have]
    return []


def git_commit(root: Path | None = None) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(root or Path(__file__).resolve().parents[1]), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def machine_info(with_torch: bool = True) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "commit": git_commit(),
    }
    if with_torch:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["gpu"] = (
            [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available()
            else None
        )
    return info


def describe(info: dict[str, Any]) -> str:
    """One line naming the machine."""
    text = f"{info['cpu']} ({info['affinity'] or info['cores']} cores"
    if info.get("cpu_flags"):
        text += ", " + " ".join(info["cpu_flags"])
    text += ")"
    if "torch" in info:
        text += f", torch {info['torch']} ({info['torch_threads']} threads, {info['cpu_capability']})"
    text += f", GPU: {', '.join(info['gpu'])}" if info.get("gpu") else ", no GPU"
    if info.get("load_average"):
        text += f"; load average {info['load_average'][0]:.2f}"
    return text


def add_worktree(rev: str) -> Path:
    """A detached worktree of `rev`, with this tree's data/ outputs (not in git) linked in."""
    path = Path(tempfile.mkdtemp(prefix="nas-bench-rev-"))
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(path), rev],
        check=True,
        capture_output=True,
        text=True,
    )
    data = ROOT / "data"
    if data.is_dir():
        (path / "data").mkdir(exist_ok=True)
        for child in data.iterdir():
            target = path / "data" / child.name
            if not target.exists():
                target.symlink_to(child.resolve())
    return path


def remove_worktree(path: Path) -> None:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], capture_output=True, text=True
    )
    shutil.rmtree(path, ignore_errors=True)
