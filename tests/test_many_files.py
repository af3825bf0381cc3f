"""Thousands of shards under a low limit of open files: npyfeed holds one descriptor per file it opens.

Each case runs in a child process whose soft ``RLIMIT_NOFILE`` is 256, far below the 2,000 shards opened.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

SHARDS = 2000
ROWS = 3  # rows per shard; row r of the whole array holds r

CHILD = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    import npyfeed

    data, hard = sys.argv[1], int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        array = npyfeed.open(data + "/x_*.npy")
    except OSError as e:
        print(json.dumps({"error": str(e), "errno": e.errno}))
        sys.exit(0)
    loader = npyfeed.Loader(array, batch_size=64, shuffle=True, seed=3)
    rows = np.concatenate(list(loader)).tolist()
    print(json.dumps({"len": len(array), "rows": rows, "last": int(array[-1]), "soft": resource.getrlimit(
        resource.RLIMIT_NOFILE)[0]}))
    """
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("shards")
    for i in range(SHARDS):
        np.save(data / f"x_{i:05d}.npy", np.arange(i * ROWS, (i + 1) * ROWS, dtype=np.int32))
    return data


def _run(data: Path, hard: int) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(data), str(hard)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_a_glob_of_2000_shards_opens_and_reads_under_a_soft_limit_of_256(shards: Path) -> None:
    result = _run(shards, hard=8192)
    assert result["len"] == SHARDS * ROWS and result["last"] == SHARDS * ROWS - 1
    assert sorted(result["rows"]) == list(range(SHARDS * ROWS))  # a shuffled epoch: every row exactly once
    assert result["soft"] > SHARDS  # the soft limit was raised to the hard one


def test_a_hard_limit_too_low_is_a_clear_error_naming_the_file_and_the_limit(shards: Path) -> None:
    result = _run(shards, hard=256)
    assert result["errno"] == 24
    error = str(result["error"])
    assert "x_0" in error and ".npy" in error and "ulimit -n" in error and "256" in error
