"""Files that change under a running job: truncated, rewritten in place, replaced, deleted.

Each case runs in a subprocess, because the failure being guarded against is a ``SIGBUS`` that kills the
process (exit 135) with no exception. The child iterates a Loader (numpy iterator or tf.data), changes the file
after some batches (during an epoch or between epochs), and reports what it saw: the batches it got (all must be
rows of the version opened) and the error (an ``NpyfeedError`` naming the file).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import npyfeed
from npyfeed.storage import sigbus

ROWS, WIDTH = 8192, 256  # 8 MiB of int32 rows: more than the loader reads ahead, so the change bites mid-epoch

CHILD = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import npyfeed

    path, mode, shuffle, when, change = sys.argv[1:6]
    shuffle = {"none": False, "global": True, "block": "block"}[shuffle]
    original = np.load(path)
    geometry = {"block_rows": 512} if shuffle == "block" else {}
    loader = npyfeed.Loader(path, batch_size=64, shuffle=shuffle, seed=1, prefetch=2, **geometry)

    def change_file():
        if change == "truncate":
            os.truncate(path, 4096)
        elif change == "rewrite":  # np.save over the same path: the same inode, truncated then rewritten
            np.save(path, original.astype(np.float32).view(np.int32) + 1)
        elif change == "replace":  # another dtype, the same size, renamed over the path
            np.save(path + ".new.npy", original.view(np.float32))
            os.replace(path + ".new.npy", path)
        elif change == "delete":
            os.unlink(path)

    def epochs():
        if mode == "numpy":
            while True:
                yield iter(loader)
        else:
            ds = loader.to_tf_dataset()
            while True:
                yield (b.numpy() for b in ds)

    got, error, changed = 0, None, False
    try:
        for e, epoch in enumerate(epochs()):
            for i, batch in enumerate(epoch):
                ids = batch[:, 0] // WIDTH
                assert np.array_equal(batch, original[ids]), "a batch holds bytes of another version"
                got += 1
                if when == "during" and not changed and i == 3:
                    change_file(); changed = True
            if when == "between" and not changed:
                change_file(); changed = True
            if e >= 2:
                break
    except npyfeed.NpyfeedError as exc:
        error = f"{type(exc).__name__}: {exc} | cause: {exc.__cause__!r}"
    except Exception as exc:  # tf.data wraps errors raised inside numpy_function
        error = f"{type(exc).__name__}: {exc}"
    print(json.dumps({"batches": got, "error": error, "per_epoch": len(loader)}))
    """
).replace("WIDTH", str(WIDTH))


def _run(tmp_path: Path, mode: str, shuffle: str, when: str, change: str, **env_vars: str) -> dict[str, object]:
    path = tmp_path / "x.npy"
    np.save(path, np.arange(ROWS * WIDTH, dtype=np.int32).reshape(ROWS, WIDTH))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env_vars}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), mode, shuffle, when, change],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, f"child died with {proc.returncode} (-7/135 is SIGBUS): {proc.stderr[-2000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["error"] is not None, f"the change went unnoticed: {report}"
    assert str(path) in report["error"], report["error"]
    return report


@pytest.mark.slow
@pytest.mark.parametrize("shuffle", ["none", "global", "block"])
@pytest.mark.parametrize("when", ["during", "between"])
def test_truncated_under_the_numpy_iterator(tmp_path: Path, shuffle: str, when: str) -> None:
    report = _run(tmp_path, "numpy", shuffle, when, "truncate")
    assert "FileChangedError" in report["error"] and "truncated" in report["error"]
    if when == "between":
        assert report["batches"] == report["per_epoch"]  # the whole first epoch, then the error at the next batch
    else:
        assert 4 <= report["batches"] < report["per_epoch"]


@pytest.mark.slow
@pytest.mark.parametrize("shuffle", ["global", "none"])
def test_truncated_without_the_sigbus_guard(tmp_path: Path, shuffle: str) -> None:
    # NPYFEED_SIGBUS_GUARD=0: no signal handler, reads go through pread (slower, as safe).
    report = _run(tmp_path, "numpy", shuffle, "during", "truncate", NPYFEED_SIGBUS_GUARD="0")
    assert "FileChangedError" in report["error"] and "truncated" in report["error"]


@pytest.mark.slow
@pytest.mark.parametrize(("shuffle", "when"), [("global", "during"), ("block", "between"), ("none", "during")])
def test_truncated_under_tf_data(tmp_path: Path, shuffle: str, when: str) -> None:
    pytest.importorskip("tensorflow")
    report = _run(tmp_path, "tf", shuffle, when, "truncate")
    assert "truncated" in report["error"]


@pytest.mark.slow
@pytest.mark.parametrize("change", ["rewrite", "replace", "delete"])
def test_rewritten_replaced_or_deleted_under_the_numpy_iterator(tmp_path: Path, change: str) -> None:
    report = _run(tmp_path, "numpy", "global", "during", change)
    assert "FileChangedError" in report["error"]
    assert {"rewrite": "since it was opened", "replace": "another file", "delete": "deleted"}[change] in report["error"]


def test_replaced_between_open_and_first_read_is_never_read_with_the_old_header(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.arange(1000, dtype=np.int64))
    loader = npyfeed.Loader(path, batch_size=100)
    np.save(tmp_path / "y.npy", np.arange(1000, dtype=np.float64))  # the same size, another dtype
    (tmp_path / "y.npy").replace(path)
    with pytest.raises(npyfeed.NpyfeedError, match="another file") as info:
        next(iter(loader))
    assert str(path) in str(info.value)
    with pytest.raises(npyfeed.FileChangedError, match="another file"):
        loader.source.arrays[0][0:3]


@pytest.mark.skipif(not sigbus.enabled(), reason="the SIGBUS guard is off here (not 64-bit Linux, or disabled)")
def test_a_mapping_that_loses_its_pages_raises_instead_of_dying(tmp_path: Path) -> None:
    # In-process: the guard turns the vanished pages into an error, and the interpreter goes on.
    path = tmp_path / "x.npy"
    np.save(path, np.arange(1 << 20, dtype=np.int64).reshape(-1, 512))
    a = npyfeed.NpyArray(path)
    storage = a.storage
    first = a[0:4].copy()
    records = storage.records(a.header.data_offset, a.row_bytes)  # type: ignore[attr-defined]
    os.truncate(path, 8192)
    out = np.empty((256, a.row_bytes), np.uint8)
    np.take(records, np.arange(1000, 2024, 4), axis=0, out=out)  # would be SIGBUS without the guard
    assert not out.any()  # the vanished pages read as zeros...
    with pytest.raises(npyfeed.FileChangedError, match="truncated to 8192 bytes"):
        a[0:4]  # ...and every read after says why, even of rows that are still in the file
    assert first[0, 1] == 1


FOREIGN = """
import mmap, os, sys, faulthandler
import numpy as np
import npyfeed
path, other, handler = sys.argv[1:4]
faulthandler.enable() if handler == "faulthandler" else faulthandler.disable()
a = npyfeed.NpyArray(path)
assert a[0:2].sum() >= 0  # npyfeed's mapping exists: the guard is installed
if handler == "late-faulthandler":
    faulthandler.enable()  # replaces the guard; the next file npyfeed maps puts it back
    np.save(path + ".2.npy", np.arange(1 << 16))
    b = npyfeed.NpyArray(path + ".2.npy")
    records = b.storage.records(b.header.data_offset, 8)
    os.truncate(path + ".2.npy", 4096)
    records[40000:40008].copy()  # in npyfeed's mapping: zeros, no SIGBUS
    try:
        b[0:1]
    except npyfeed.FileChangedError as e:
        print("guarded", e, flush=True)
with open(other, "wb") as f:
    f.write(b"x" * (1 << 20))
fd = os.open(other, os.O_RDONLY)
m = mmap.mmap(fd, 1 << 20, access=mmap.ACCESS_READ)
os.truncate(other, 0)
print("read", m[500000], flush=True)  # not npyfeed's mapping: must die of SIGBUS as without npyfeed
"""


@pytest.mark.parametrize("handler", ["default", "faulthandler", "late-faulthandler"])
def test_a_fault_outside_npyfeed_still_kills_the_process(tmp_path: Path, handler: str) -> None:
    # The guard hands faults it does not own to the handler that was there before it.
    np.save(tmp_path / "x.npy", np.arange(10))
    proc = subprocess.run(
        [sys.executable, "-c", FOREIGN, str(tmp_path / "x.npy"), str(tmp_path / "other.bin"), handler],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -7, (proc.returncode, proc.stdout, proc.stderr[-1000:])  # SIGBUS, as before
    assert "read" not in proc.stdout
    assert ("Fatal Python error: Bus error" in proc.stderr) == (handler != "default"), proc.stderr[-1000:]
    assert ("guarded" in proc.stdout) == (handler == "late-faulthandler"), proc.stdout
