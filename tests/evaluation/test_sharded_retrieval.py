"""Evaluation sharded across ranks: shares, one gather per quantity, 2 processes == 1 process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nas.evaluation.sharding import gather_shards, shard_bounds

HERE = Path(__file__).parent


@pytest.mark.parametrize(("n", "shards"), [(5, 2), (11, 3), (2, 4), (8, 8)])
def test_shares_are_contiguous_cover_everything_and_differ_by_at_most_one(n, shards):
    bounds = [shard_bounds(n, s, shards) for s in range(shards)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_gather_drops_the_padding_of_short_shares_with_one_collective():
    full = torch.arange(10.0).reshape(5, 2)
    shares = [full[slice(*shard_bounds(5, s, 2))] for s in range(2)]  # 3 rows + 2 rows
    calls = []

    def fake_all_gather(padded):  # what idist.all_gather returns: every rank's padded share, in order
        calls.append(padded.shape)
        others = [torch.cat([share, share.new_zeros(3 - len(share), 2)]) for share in shares]
        return torch.cat(others)

    assert torch.equal(gather_shards(shares[1], 5, shards=2, gather=fake_all_gather), full)
    assert calls == [torch.Size([3, 2])]


@pytest.mark.slow
def test_two_gloo_processes_give_the_one_process_scores(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "CUDA_VISIBLE_DEVICES": "",
    }
    outputs = {}
    for nproc in (1, 2):
        out = tmp_path / f"scores{nproc}.pt"
        proc = subprocess.run(
            [sys.executable, str(HERE / "retrieval_shard_worker.py"), str(nproc), str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs[nproc] = torch.load(out)
    single, double = outputs[1], outputs[2]
    assert sorted(single) == sorted(double) == ["i2t", "itc", "t2i"]
    assert single["itc"].shape == (5, 11) and single["t2i"].shape == (11, 5)
    for key in single:
        torch.testing.assert_close(double[key], single[key], rtol=1e-5, atol=1e-5, msg=key)
    assert (single["i2t"] > -100).sum(dim=1).tolist() == [3] * 5  # top-3 re-ranked per image
