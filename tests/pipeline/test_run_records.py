"""Sacred records of killed runs do not stay RUNNING forever."""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys

from experiments.common import mark_interrupted_runs


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
