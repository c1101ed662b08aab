"""The kill -9 campaign, short form: one SIGKILL of each kind (mid-epoch step, mid-save, before the
rename, after the rename) across ALBEF, NAS stage 1 and 2, MUG and UTA; each run resumes to a final
state bit-identical to an uninterrupted run, with no temporary file or run lock left behind.
The full campaign (12 kill points per recipe): `python -m nas.testing.crash_resume`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from nas.testing.crash_resume import SHORT_FORM, KillPoint, differences


def test_kill_points_parse_and_refuse_bad_text():
    assert KillPoint.parse("save:2:0.25") == KillPoint("save", 2, 0.25)
    assert str(KillPoint.parse("rename:3")) == "rename:3"
    for bad in ("step", "save:1", "explode:1", "save:1:1.5"):
        with pytest.raises(ValueError, match="kill point"):
            KillPoint.parse(bad)


def test_differences_compare_tensors_bitwise_and_ignore_wall_clock_seconds():
    a = {"model": {"w": torch.tensor([1.0, 2.0])}, "history": {"epochs": [{"loss": 1.0, "seconds": 3.0}]}}
    b = {"model": {"w": torch.tensor([1.0, 2.0])}, "history": {"epochs": [{"loss": 1.0, "seconds": 9.0}]}}
    assert differences(a, b) == []
    b["model"]["w"] = torch.tensor([1.0, 2.0 + 2**-22])  # one ulp at 2.0
    b["history"]["epochs"][0]["loss"] = 1.5
    assert differences(a, b) == ["last.pt.model.w", "last.pt.history.epochs[0].loss"]


def test_every_kind_of_kill_resumes_bit_identical(tmp_path):
    # A fresh interpreter: the campaign forks its runs, which is only safe from a process that has not
    # run a torch kernel (this test process has).
    out = tmp_path / "campaign.json"
    done = subprocess.run(
        [sys.executable, "-m", "nas.testing.crash_resume", "--short", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    outcomes = json.loads(out.read_text())
    assert {(o["recipe"], o["point"]) for o in outcomes} == {
        (r, p) for r, ps in SHORT_FORM.items() for p in ps
    }
    assert {KillPoint.parse(o["point"]).kind for o in outcomes} == {"step", "save", "rename", "after"}
    assert all(o["killed"] and o["identical"] and not o["leftovers"] for o in outcomes), outcomes
