"""Profiles: whole studies at another scale, selected without editing a tracked file.

The repository root is the embedded default: params.yaml + dvc.yaml, `dvc repro`. Another profile is a
folder `profiles/<name>/` holding its own params.yaml (same keys, other values) and a dvc.yaml that is the
root's with one line changed: the `code` variable, the way from that folder back to the repository root
(`../..`). DVC runs a dvc.yaml's stages in the dvc.yaml's folder, so a profile's data, runs, checkpoints,
metrics and reports land under `profiles/<name>/` and never touch another profile's; its data paths follow
its params (`${data.root}`), its code paths follow `code`. So:

    cd profiles/paper && dvc repro            # the paper scale (8 GPUs; real corpora)
    dvc repro profiles/paper/dvc.yaml         # the same, from the root
    nas profile new mine --from paper         # a profile of your own: edit profiles/mine/params.yaml
    nas profile sync                          # after editing the root dvc.yaml: rewrite every profile's copy

No imports beyond the standard library: the CLI answers before torch is imported.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

PROFILES_DIR = "profiles"
EMBEDDED = "embedded"  # the repository root's own params.yaml
# The one line a profile's dvc.yaml changes: `  - code: <path>` under `vars:`.
_CODE_VAR = re.compile(r"^(\s+- code:\s*)(\S+)(.*)$", re.M)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ProfileError(ValueError):
    """A user error about profiles (unknown name, existing folder, a dvc.yaml without `code`)."""


def profile_dir(name: str, repo: str | Path = ".") -> Path:
    return Path(repo) / PROFILES_DIR / name


def list_profiles(repo: str | Path = ".") -> list[str]:
    """The profiles of the repository: `embedded` (the root) and every `profiles/<name>/params.yaml`."""
    root = Path(repo) / PROFILES_DIR
    found = sorted(p.parent.name for p in root.glob("*/params.yaml")) if root.is_dir() else []
    return [EMBEDDED, *found]


def params_path(name: str, repo: str | Path = ".") -> Path:
    """The params.yaml of a profile (`embedded`: the root's)."""
    if name == EMBEDDED:
        return Path(repo) / "params.yaml"
    path = profile_dir(name, repo) / "params.yaml"
    if not path.is_file():
        raise ProfileError(f"no profile {name!r}: {path} does not exist (profiles: {list_profiles(repo)})")
    return path


def code_path(name: str) -> str:
    """The way back from a profile's folder to the repository root, as its dvc.yaml's `code` says it."""
    return Path(os.path.relpath(".", Path(PROFILES_DIR) / name)).as_posix()


def render_dvc_yaml(root_text: str, code: str) -> str:
    """The root dvc.yaml with its `code` variable set to `code`."""
    if len(_CODE_VAR.findall(root_text)) != 1:
        raise ProfileError("dvc.yaml must set the `code` variable exactly once (`vars: [{code: .}]`)")
    return _CODE_VAR.sub(lambda m: f"{m.group(1)}{code}{m.group(3)}", root_text, count=1)


def expected_dvc_yaml(name: str, repo: str | Path = ".") -> str:
    return render_dvc_yaml((Path(repo) / "dvc.yaml").read_text(encoding="utf-8"), code_path(name))


def sync_profiles(repo: str | Path = ".", *, check: bool = False) -> list[str]:
    """Rewrite every profile's dvc.yaml from the root one; returns the profiles whose file changed (with
    `check`, the ones that would change, writing nothing)."""
    changed = []
    for name in list_profiles(repo)[1:]:
        path = profile_dir(name, repo) / "dvc.yaml"
        text = expected_dvc_yaml(name, repo)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            changed.append(name)
            if not check:
                path.write_text(text, encoding="utf-8")
    return changed


def new_profile(name: str, source: str = EMBEDDED, repo: str | Path = ".") -> Path:
    """profiles/<name>/ with a copy of `source`'s params.yaml and the rendered dvc.yaml."""
    if not _NAME.match(name) or name == EMBEDDED:
        raise ProfileError(
            f"{name!r} is not a usable profile name (letters, digits, '_', '-', '.'; not {EMBEDDED!r})"
        )
    folder = profile_dir(name, repo)
    if folder.exists():
        raise ProfileError(f"{folder} exists already: edit its params.yaml, or choose another name")
    source_params = params_path(source, repo)
    folder.mkdir(parents=True)
    shutil.copyfile(source_params, folder / "params.yaml")
    (folder / "dvc.yaml").write_text(expected_dvc_yaml(name, repo), encoding="utf-8")
    return folder
