"""nas.progress: plain lines (no carriage returns) where stderr is not a terminal, silence on request."""

from __future__ import annotations

import io

from nas import progress


def test_plain_lines_name_the_loop_count_and_eta():
    out = io.StringIO()
    lines = progress.LineProgress(4, "probes", every_seconds=0.0, stream=out)
    for _ in range(4):
        lines.update(postfix="loss 1.0000")
    text = out.getvalue()
    assert "\r" not in text and len(text.splitlines()) == 4
    assert text.splitlines()[1].startswith("probes: 2/4 (50 %) elapsed 0:00, eta 0:00 loss 1.0000")


def test_a_short_loop_prints_nothing(capsys, monkeypatch):
    monkeypatch.setenv("NAS_PROGRESS", "lines")
    assert list(progress.progress(range(3), desc="quick")) == [0, 1, 2]
    assert capsys.readouterr().out == ""  # under 10 s: no line at all


def test_mode_follows_the_environment(monkeypatch):
    monkeypatch.setenv("NAS_PROGRESS", "off")
    assert progress.mode() == "off"
    assert list(progress.progress(iter([1, 2]), desc="x")) == [1, 2]
    monkeypatch.setenv("NAS_PROGRESS", "")
    assert progress.mode() == "lines"  # pytest captures stderr: not a terminal
