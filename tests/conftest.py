"""Test-suite settings and fixtures shared by every module.

- ``rows``: how many rows the shared files hold: the test module's ``N`` when it defines one, else 1000.
- ``ids_path``: ``ids.npy``, the int64 row ids ``0 .. rows-1`` (a column that says which row a batch holds).
- ``files``: a labelled set of small files whose rows say where they came from (see :func:`files`).
- ``float_rows``: ``float_rows(name, rows)`` writes ``name/x.npy``, ``rows`` float32 rows of 1 KiB (values
  ``0 ..``), in a directory of the session's, and gives its path.
- ``moto_server``: ONE moto S3 server on 127.0.0.1 for the whole session (started on first use, stopped at the end);
  ``s3``: that server reached through the standard ``AWS_*`` environment while one module's tests run. Each module
  creates its own bucket (a name of its own), so modules never see each other's objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import Phase, settings

from servers import MotoS3, environment

# Hypothesis' explain phase re-runs a failing example under a tracer, which over real servers and threads (moto,
# tf.data) takes minutes and has crashed the interpreter: the shrunk failing example is what we need, quickly.
settings.register_profile("npyfeed", phases=[phase for phase in Phase if phase is not Phase.explain])
settings.load_profile("npyfeed")


@pytest.fixture
def rows(request: pytest.FixtureRequest) -> int:
    return int(getattr(request.module, "N", 1000))


@pytest.fixture
def ids_path(tmp_path: Path, rows: int) -> str:
    path = tmp_path / "ids.npy"
    np.save(path, np.arange(rows, dtype=np.int64))
    return str(path)


@pytest.fixture
def files(tmp_path: Path, ids_path: str, rows: int) -> dict[str, str]:
    """Paths of ``.npy`` files of ``rows`` rows each, row ``i`` of every one derived from ``i``:

    - ``x``: float32 ``(rows, 4)``, row ``i`` is ``10 * i + [0, 1, 2, 3]``; ``big``: the same, big-endian;
    - ``ids``: int64 row ids; ``w``: float32 weights in [0.5, 1.5]; ``names``: ``S4`` strings ``b"r<i>"``;
    - ``img``: uint8 ``(rows, 2, 3)``; ``wide``: float32 ``(rows, 1024)`` of ones (4 KiB rows).
    """
    x = np.arange(rows)[:, None] * 10.0 + np.arange(4)
    arrays = {
        "x": x.astype("<f4"),
        "big": x.astype(">f4"),
        "w": np.linspace(0.5, 1.5, rows, dtype=np.float32),
        "names": np.array([f"r{i}" for i in range(rows)], dtype="S4"),
        "img": (np.arange(rows * 6) % 256).astype(np.uint8).reshape(rows, 2, 3),
        "wide": np.ones((rows, 1024), np.float32),
    }
    paths = {"ids": ids_path}
    for name, array in arrays.items():
        paths[name] = str(tmp_path / f"{name}.npy")
        np.save(paths[name], array)
    return paths


@pytest.fixture(scope="session")
def float_rows(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, int], str]:
    def make(name: str, rows: int) -> str:
        path = str(tmp_path_factory.mktemp(name) / "x.npy")
        np.save(path, np.arange(rows * 256, dtype=np.float32).reshape(rows, 256))
        return path

    return make


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoS3]:
    pytest.importorskip("moto")
    with MotoS3() as server:
        yield server


@pytest.fixture(scope="module")
def s3(moto_server: MotoS3) -> Iterator[MotoS3]:
    with environment(moto_server.env):
        yield moto_server
