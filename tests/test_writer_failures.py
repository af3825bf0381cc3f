"""NpyWriter when things go wrong: a full disk mid-write, SIGKILL during close, bad targets, value-changing casts.

The promise under test: the output is right or absent. A file or glob that exists holds exactly the rows of the
writes that succeeded, never shifted rows, garbage or a shorter set of shards.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import npyfeed
import npyfeed.write.casting
import npyfeed.write.publish as publish
from npyfeed import ConfigError, NpyWriter
from npyfeed.write.writer import npy_header

# -- RLIMIT_FSIZE mid-write ---------------------------------------------------------------------------------------
_FSIZE_CHILD = textwrap.dedent(
    """
    import errno, os, resource, sys
    import numpy as np
    from npyfeed import NpyWriter

    target, mode, shard_bytes, expected_path = sys.argv[1], sys.argv[2], int(sys.argv[3]) or None, sys.argv[4]
    if mode == "poison":  # the roll-back itself fails: the writer must give up, creating nothing
        def broken(fd, length):
            raise OSError(errno.EIO, "injected: truncate failed")
        os.ftruncate = broken
    rng = np.random.default_rng(0)
    batches = [rng.integers(-2**31, 2**31, size=(n, 7), dtype=np.int32) for n in (100, 900, 333, 1500, 47, 2000)]
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    w = NpyWriter(target, np.int32, (7,), shard_bytes=shard_bytes)
    resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, hard))  # the file (or a shard) hits it mid-batch
    written, failures = [], 0
    for batch in batches:
        try:
            w.write(batch)
        except OSError as e:
            failures += 1
            assert e.errno == errno.EFBIG and type(e) is OSError, repr(e)
            assert target in str(e), str(e)
            print("ERROR", e, flush=True)
            if mode != "retry":
                break
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            w.write(batch)  # the same batch again: must land exactly where it belongs
        written.append(batch)
    assert failures == 1, failures
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    if mode == "poison":
        try:
            w.write(batches[0])
        except OSError as e:
            assert e.errno == errno.EFBIG and target in str(e) and "never created" in str(e), str(e)
            print("LATER WRITE", e, flush=True)
        else:
            raise SystemExit("a write after a failed roll-back was accepted")
        try:
            w.close()
        except OSError as e:
            assert e.errno == errno.EFBIG and target in str(e), str(e)
            print("CLOSE", e, flush=True)
        else:
            raise SystemExit("close() after a failed roll-back was accepted")
    else:
        w.close()
    np.save(expected_path, np.concatenate(written))
    print("DONE", flush=True)
    """
)


def _run_fsize_child(tmp_path: Path, target: Path, mode: str, shard_bytes: int) -> tuple[str, np.ndarray]:
    expected_path = tmp_path / "expected.npy"
    done = subprocess.run(
        [sys.executable, "-c", _FSIZE_CHILD, str(target), mode, str(shard_bytes), str(expected_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "DONE" in done.stdout, done.stdout + done.stderr
    return done.stdout, np.load(expected_path)


@pytest.mark.parametrize("mode", ["retry", "close"])
def test_rlimit_fsize_mid_write_leaves_exact_rows(tmp_path: Path, mode: str) -> None:
    target = tmp_path / "x.npy"
    out, expected = _run_fsize_child(tmp_path, target, mode, 0)
    assert "File too large" in out and str(target) in out and "can be retried" in out
    if mode == "retry":
        assert len(expected) == 100 + 900 + 333 + 1500 + 47 + 2000
    else:
        assert 0 < len(expected) < 60_000 // 28  # the batches before the failed one, nothing of it
    # Byte for byte what np.save writes: no shifted rows, no garbage after the last row.
    assert target.read_bytes() == npy_header(np.dtype(np.int32), expected.shape) + expected.tobytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["expected.npy", "x.npy"]


@pytest.mark.parametrize("mode", ["retry", "close"])
def test_rlimit_fsize_mid_write_of_shards(tmp_path: Path, mode: str) -> None:
    target = tmp_path / "out" / "x.npy"
    shard_bytes = 100_000  # shards larger than the limit: one fails mid-batch, after earlier shards were filled
    out, expected = _run_fsize_child(tmp_path, target, mode, shard_bytes)
    assert "File too large" in out and str(target) in out
    files = sorted((tmp_path / "out").iterdir())
    assert all(f.stat().st_size <= shard_bytes for f in files)
    assert npyfeed.open(str(tmp_path / "out" / "x_*.npy"))[:].tobytes() == expected.tobytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["expected.npy", "out"]


@pytest.mark.parametrize("shard_bytes", [0, 100_000])
def test_a_failed_roll_back_poisons_the_writer(tmp_path: Path, shard_bytes: int) -> None:
    target = tmp_path / "x.npy" if not shard_bytes else tmp_path / "out" / "x.npy"
    out, _ = _run_fsize_child(tmp_path, target, "poison", shard_bytes)
    assert "LATER WRITE" in out and "CLOSE" in out and "injected: truncate failed" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["expected.npy"]  # no target, no temporary


def test_an_interrupted_write_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any exception inside write() (here a KeyboardInterrupt after half a batch) rolls back the same way."""
    target = tmp_path / "x.npy"
    calls = []
    real = os.pwrite

    def interrupted(fd: int, data: bytes, offset: int) -> int:
        calls.append(offset)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(fd, data[: max(1, len(data) // 2)], offset)  # short writes, as at a size limit

    with NpyWriter(target, np.float64, (3,)) as w:
        w.write(np.ones((4, 3)))
        monkeypatch.setattr(os, "pwrite", interrupted)
        with pytest.raises(KeyboardInterrupt):
            w.write(np.full((5, 3), 2.0))
        monkeypatch.setattr(os, "pwrite", real)
        assert w.rows_written == 4
        w.write(np.full((5, 3), 3.0))
    np.testing.assert_array_equal(np.load(target), np.concatenate([np.ones((4, 3)), np.full((5, 3), 3.0)]))


# -- SIGKILL during a sharded close --------------------------------------------------------------------------------
_SHARDS, _ROWS_PER_SHARD = 40, 4
_CLOSE_CHILD = textwrap.dedent(
    f"""
    import os, signal, sys
    import numpy as np
    from npyfeed import NpyWriter

    target, kill_at = sys.argv[1], int(sys.argv[2])
    rows = np.arange({_SHARDS * _ROWS_PER_SHARD} * 3, dtype=np.uint16).reshape(-1, 3)
    w = NpyWriter(target, np.uint16, (3,), shard_bytes=128 + {_ROWS_PER_SHARD} * 6)
    w.write(rows)
    calls = 0

    def counted(real):
        def call(*args, **kwargs):
            global calls
            calls += 1
            if calls == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        return call

    for name in ("rename", "replace", "fsync"):  # every step of close() that a crash could fall between
        setattr(os, name, counted(getattr(os, name)))
    print("closing", flush=True)
    w.close()
    print("closed", calls, flush=True)
    """
)


def _glob_is_whole_or_absent(tmp_path: Path, expected: np.ndarray) -> bool:
    """True if the shards are all there (exactly the rows), False if none is; anything else fails the test."""
    files = sorted(tmp_path.glob("out/x_*.npy"))
    if not files:
        assert not (tmp_path / "out").exists()
        return False
    assert len(files) == _SHARDS, [f.name for f in files]
    assert npyfeed.open(str(tmp_path / "out" / "x_*.npy"))[:].tobytes() == expected.tobytes()
    return True


def test_sigkill_at_every_step_of_a_sharded_close(tmp_path: Path) -> None:
    expected = np.arange(_SHARDS * _ROWS_PER_SHARD * 3, dtype=np.uint16).reshape(-1, 3)
    steps = 2 * _SHARDS + 3  # an fsync and a rename per shard, then fsync, rename and fsync of the directory
    points = [1, 2, _SHARDS // 2, _SHARDS, _SHARDS + 1, _SHARDS + 17, 2 * _SHARDS, steps - 2, steps - 1, steps]
    dirs = [tmp_path / f"k{k}" for k in points]
    children = []
    for k, d in zip(points, dirs, strict=True):
        d.mkdir()
        args = [sys.executable, "-c", _CLOSE_CHILD, str(d / "out" / "x.npy"), str(k)]
        children.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    published = {}
    for k, d, child in zip(points, dirs, children, strict=True):
        out, err = child.communicate(timeout=120)
        assert child.returncode == -signal.SIGKILL, (k, out, err)
        published[k] = _glob_is_whole_or_absent(d, expected)
    # Killed up to the directory's rename (call steps - 1): nothing; after it: everything. Never anything between.
    assert published == {k: k >= steps for k in points}
    d = tmp_path / "whole"
    d.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", _CLOSE_CHILD, str(d / "out" / "x.npy"), "0"], capture_output=True, text=True, timeout=120
    )
    assert done.stdout.split() == ["closing", "closed", str(steps)], done.stdout + done.stderr
    assert _glob_is_whole_or_absent(d, expected)


def test_sigkill_at_random_times_during_a_sharded_close(tmp_path: Path) -> None:
    expected = np.arange(_SHARDS * _ROWS_PER_SHARD * 3, dtype=np.uint16).reshape(-1, 3)
    rng = random.Random(17)
    for run in range(8):
        d = tmp_path / f"r{run}"
        d.mkdir()
        args = [sys.executable, "-c", _CLOSE_CHILD, str(d / "out" / "x.npy"), "0"]
        child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline() == "closing\n"
            time.sleep(rng.uniform(0, 0.02))
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=60)
        finally:
            child.kill()
            child.wait()
            assert child.stdout is not None
            child.stdout.close()
        _glob_is_whole_or_absent(d, expected)


# -- targets refused when the writer is made -----------------------------------------------------------------------
def test_a_directory_target_is_refused_before_any_write(tmp_path: Path) -> None:
    (tmp_path / "d.npy").mkdir()
    with pytest.raises(IsADirectoryError, match=r"is a directory.*d\.npy") as info:
        NpyWriter(tmp_path / "d.npy", np.float32)
    assert info.value.errno == errno.EISDIR and info.value.filename == str(tmp_path / "d.npy")
    os.mkfifo(tmp_path / "fifo.npy")
    with pytest.raises(ConfigError, match=r"fifo\.npy: the target exists and is not a regular file"):
        NpyWriter(tmp_path / "fifo.npy", np.float32)
    with pytest.raises(FileNotFoundError, match=r"missing/x\.npy"):
        NpyWriter(tmp_path / "missing" / "x.npy", np.float32)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="go in a directory"):
        NpyWriter(tmp_path / "file" / "x.npy", np.float32, shard_bytes=1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npy", "fifo.npy", "file"]


_UNWRITABLE_CHILD = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from npyfeed import NpyWriter
    if os.geteuid() == 0:
        os.setuid(65534)  # root may write anything: check as an ordinary user
    try:
        NpyWriter(sys.argv[1], np.float32)
    except PermissionError as e:
        print("refused", e.errno, e.filename, e.strerror)
    """
)


def test_an_unwritable_target_is_refused_before_any_write() -> None:
    # Not under tmp_path: the child may run as an ordinary user, who cannot enter pytest's private directories.
    d = Path(tempfile.mkdtemp(prefix="npyfeed-ro-"))
    try:
        d.chmod(0o777)  # the directory is writable: only the file's own mode stops the writer
        target = d / "ro.npy"
        np.save(target, np.arange(3))
        target.chmod(0o444)
        done = subprocess.run(
            [sys.executable, "-c", _UNWRITABLE_CHILD, str(target)], capture_output=True, text=True, timeout=120
        )
        assert done.stdout.split()[:3] == ["refused", str(errno.EACCES), str(target)], done.stdout + done.stderr
        assert "not writable" in done.stdout
        assert sorted(p.name for p in d.iterdir()) == ["ro.npy"]
        np.testing.assert_array_equal(np.load(target), np.arange(3))
    finally:
        shutil.rmtree(d)


def test_shards_replace_an_empty_directory_keeping_its_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o750)
    with NpyWriter(out / "x.npy", "u1", shard_bytes=130) as w:
        w.write(np.arange(5, dtype="u1"))
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert w.outputs == tuple(str(out / f"x_00{i}.npy") for i in range(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    with pytest.raises(ConfigError, match="current directory"):
        NpyWriter("x.npy", "u1", shard_bytes=130)
    with pytest.raises(ConfigError, match=r"already holds x_000\.npy, x_001\.npy, x_002\.npy; name a new"):
        NpyWriter(out / "y.npy", "u1", shard_bytes=130)


# -- casts that would change values ---------------------------------------------------------------------------------
@pytest.fixture(params=[True, False], ids=["numpy-same-value", "min-max"])
def value_check(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both ways of checking values: NumPy's own cast (NumPy >= 2.4) and the min/max comparison."""
    if request.param and not npyfeed.write.casting._SAME_VALUE:
        assert np.lib.NumpyVersion(np.__version__) < "2.4.0"  # only older NumPy lacks it
    monkeypatch.setattr(npyfeed.write.casting, "_SAME_VALUE", request.param and npyfeed.write.casting._SAME_VALUE)
    return bool(request.param)


@pytest.mark.parametrize(
    ("file_dtype", "rows", "message"),
    [
        ("i1", np.array([1, -128, 300, 2**40]), r"row 7 holds 300, which int8 cannot hold \(-128\.\.127\)"),
        ("i8", np.array([0, 2**63], np.uint64), r"row 6 holds 9223372036854775808, which int64 cannot hold"),
        ("i1", np.array([5, 200], np.uint16), "row 6 holds 200, which int8"),
        ("u2", np.array([[7, 8], [9, 70000]], np.uint32).reshape(2, 2), "row 6 holds 70000, which uint16"),
        (
            [("a", "i2"), ("b", "i1")],
            np.array([(1, 2), (3, 300)], [("a", "i8"), ("b", "i8")]),
            r"row 6\['b'\] holds 300, which int8 cannot hold \(-128\.\.127\)",
        ),
    ],
)
def test_narrowing_integer_casts_check_every_value(
    tmp_path: Path, value_check: bool, file_dtype: object, rows: np.ndarray, message: str
) -> None:
    target = tmp_path / "x.npy"
    row_shape = rows.shape[1:]
    with NpyWriter(target, file_dtype, row_shape) as w:
        w.write(np.zeros((5, *row_shape), np.dtype(file_dtype)))
        with pytest.raises(ConfigError, match=rf"x\.npy: write\(\): {message}.*nothing was written"):
            w.write(rows)
        w.write(rows[:1])  # the values that fit go in unchanged
    got = np.load(target)
    assert len(got) == 6 and got[5].tolist() == rows[0].astype(file_dtype).tolist()


def test_the_rules_for_other_casts(tmp_path: Path) -> None:
    with NpyWriter(tmp_path / "u.npy", "i1", casting="unsafe") as w:
        w.write(np.array([300, 2**40]))  # unsafe: NumPy's astype, wrapping
    assert np.load(tmp_path / "u.npy").tolist() == [44, 0]
    # Float narrowing keeps NumPy's same_kind rule: rounded, and inf (with NumPy's warning) beyond float32's range.
    with NpyWriter(tmp_path / "f.npy", "f4") as w, pytest.warns(RuntimeWarning, match="overflow"):
        w.write(np.array([0.1, 1e300]))
    assert np.load(tmp_path / "f.npy").tolist() == [np.float32(0.1), np.inf]
    with NpyWriter(tmp_path / "i.npy", "i2") as w:
        w.write(np.array([1, 2], np.int8))  # widening: nothing to check
        with pytest.raises(ConfigError, match=r"float64 cannot be cast to int16 under casting='same_kind'"):
            w.write(np.array([1.0]))
        with pytest.raises(ConfigError, match=r"int64 cannot be cast to int16 under casting='safe'"):
            NpyWriter(tmp_path / "s.npy", "i2", casting="safe").write(np.array([1]))
    assert np.load(tmp_path / "i.npy").tolist() == [1, 2]


def test_errors_at_close_name_the_target_and_say_what_was_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "injected")

    target = tmp_path / "x.npy"
    w = NpyWriter(target, "u1")
    w.write(np.arange(3, dtype="u1"))
    monkeypatch.setattr(os, "fsync", failing_fsync)  # the file's own fsync: nothing may be published
    with pytest.raises(OSError, match=r"injected: closing: nothing was published: '.*x\.npy'") as info:
        w.close()
    assert info.value.errno == errno.EIO and sorted(tmp_path.iterdir()) == []
    monkeypatch.undo()

    def failing_dir_sync(path: Path) -> None:
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(publish, "fsync_dir", failing_dir_sync)  # after the rename: published, not durable
    failed = pytest.raises(OSError, match=r"injected: published, but syncing its directory failed")
    with failed, NpyWriter(target, "u1") as w:
        w.write(np.arange(3, dtype="u1"))
    assert np.load(target).tolist() == [0, 1, 2] and sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]
