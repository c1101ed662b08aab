"""`python -m benchmarks` (= `nas bench`): one quick case end to end, and the JSON it writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_uta_case_writes_the_json_schema(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "uta", "--threads", "1", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    result = json.loads(out.read_text())
    assert result["schema"] == "nas-bench/1" and result["quick"] is True
    machine = result["machine"]
    assert machine["cpu"] and machine["cores"] >= 1 and machine["torch"] and "gpu" in machine
    assert set(result["cases"]) == {"uta"}
    uta = result["cases"]["uta"]["this"]
    assert uta["baseline"] == "MIM" and set(uta["arms"]) == {"MIM", "UTA", "no mask"}
    for arm in uta["arms"].values():
        assert arm["median_seconds"] > 0 and arm["ratio_to_baseline"] > 0 and arm["steps"] == 1
        assert set(arm["first_losses"]) == {"loss"}
    assert uta["arms"]["MIM"]["ratio_to_baseline"] == 1.0
    assert uta["torch_threads"] == 1 and uta["nas_source"] == str(ROOT / "nas")
    # the table printed and stored: a header, a rule and one row per arm
    assert result["table"][0].startswith("| benchmark | arm |") and any(
        "| UTA |" in r for r in result["table"]
    )
    assert "| uta (batch 8) | UTA |" in done.stdout


def test_bench_help_is_lazy():
    """`nas bench --help` answers without importing torch (the benchmarks import it in their workers)."""
    code = (
        "import sys\n"
        "from nas import cli\n"
        "try:\n"
        "    cli.main(['bench', '--help'])\n"
        "except SystemExit as e:\n"
        "    print('exit', e.code, file=sys.__stderr__)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')), file=sys.__stderr__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stderr.splitlines()[-2:] == ["exit 0", "[]"], done.stderr
    assert "usage: nas bench" in done.stdout and "--compare REV" in done.stdout
