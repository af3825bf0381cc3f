"""Paths on the command line mean what they mean to ``npyfeed.open``: globs (quoted, so the shell leaves them),
URLs with ``--storage-option``, and ``.npz`` members as ``file.npz:member`` in ``inspect``, ``convert`` and
``Loader``; a bare ``.npz`` points at that syntax; a closed pipe ends quietly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import npyfeed
from npyfeed.cli import main
from npyfeed.errors import ConfigError, NpyFormatError
from servers import MotoS3

BUCKET = "npyfeed-cli-paths"


def headers(out: str) -> list[str]:
    """The first line of each file's report: its path."""
    return [block.splitlines()[0] for block in out.strip().split("\n\n")]


@pytest.fixture
def shards(tmp_path: Path) -> list[Path]:
    paths = [tmp_path / f"x_{i}.npy" for i in range(3)]
    for i, path in enumerate(paths):
        np.save(path, np.full((4 + i, 2), i, np.float32))
    return paths


@pytest.fixture
def npz(tmp_path: Path) -> Path:
    path = tmp_path / "d.npz"
    np.savez_compressed(path, images=np.zeros((5, 2, 2), np.uint8), labels=np.arange(5))
    return path


def test_inspect_expands_a_local_glob(shards: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(shards[0].parent / "x_*.npy")]) == 0
    assert headers(capsys.readouterr().out) == [str(p) for p in shards]


def test_inspect_a_glob_matching_nothing_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tmp_path / "none_*.npy")]) == 1
    out, err = capsys.readouterr()
    assert (
        out == "" and err == f"npyfeed inspect: {tmp_path / 'none_*.npy'}: cannot open: no file matches the pattern\n"
    )


def test_inspect_an_s3_glob_with_storage_options(
    moto_server: MotoS3, shards: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    client = moto_server.client()
    client.create_bucket(Bucket=BUCKET)
    for path in shards:
        client.upload_file(str(path), BUCKET, f"glob/{path.name}")
    options = [f"endpoint={moto_server.endpoint}", "access_key_id=testing", "secret_access_key=testing"]
    options += ["region=us-east-1"]
    argv = ["inspect", f"s3://{BUCKET}/glob/x_*.npy"] + [a for o in options for a in ("--storage-option", o)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert headers(out) == [f"s3://{BUCKET}/glob/{p.name}" for p in shards]
    dest = shards[0].parent / "all.npy"
    argv = ["convert", "--no-progress", f"s3://{BUCKET}/glob/x_*.npy", str(dest)]
    assert main(argv + [a for o in options for a in ("--storage-option", o)]) == 0
    assert np.array_equal(np.load(dest), np.concatenate([np.load(p) for p in shards]))


def test_npz_members_in_inspect_convert_and_loader(
    npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", f"{npz}:images", f"{npz}:labels"]) == 0
    out = capsys.readouterr().out
    assert headers(out) == [f"{npz}:images", f"{npz}:labels"]
    assert "(5, 2, 2)" in out
    with pytest.raises(ConfigError, match=rf"npyfeed convert {npz}:images images\.npy"):
        npyfeed.Loader(f"{npz}:images", batch_size=2)
    assert main(["convert", "--no-progress", f"{npz}:images", str(tmp_path / "images.npy")]) == 0
    loader = npyfeed.Loader(str(tmp_path / "images.npy"), batch_size=2)
    assert np.concatenate(list(loader)).shape == (5, 2, 2)


def test_inspect_a_missing_npz_member_names_the_members(npz: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", f"{npz}:nope"]) == 1
    assert "the archive holds ['images', 'labels']" in capsys.readouterr().err


def test_a_bare_npz_points_at_the_member_syntax(npz: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(npz)]) == 1
    err = capsys.readouterr().err
    assert f"{npz}:MEMBER" in err and "PK" not in err
    with pytest.raises(NpyFormatError, match=r"an \.npz"):
        npyfeed.Loader(str(npz), batch_size=2)
    assert main(["convert", "--no-progress", str(npz), str(npz.parent / "out.npy")]) == 1
    assert f"{npz}:MEMBER" in capsys.readouterr().err


def test_a_closed_pipe_ends_without_a_traceback(shards: list[Path]) -> None:
    many = [str(p) for p in shards] * 2000  # far more than a pipe buffer holds
    reader = "import sys; sys.stdin.readline()"  # reads one line, then closes the pipe
    with subprocess.Popen([sys.executable, "-c", reader], stdin=subprocess.PIPE) as head:
        assert head.stdin is not None
        result = subprocess.run(
            [sys.executable, "-m", "npyfeed", "inspect", *many],
            stdout=head.stdin,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
        head.stdin.close()
        head.wait(timeout=60)
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr
    assert result.returncode == 1
