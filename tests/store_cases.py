"""Test bodies shared by every object store (S3 on moto, GCS on fake-gcs-server): the same checks, one scheme each.

Each case takes ``put(key, data) -> url``, which uploads ``data`` (``.npy`` bytes, or an array saved with
``np.save``) under ``key`` in the store's test bucket and returns its URL.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

import npyfeed
from npy_cases import arrays, check_key, row_keys, write

Put = Callable[[str, "bytes | np.ndarray"], str]

__all__ = ["Put", "glob_columns_and_shuffled_epochs", "npy_bytes", "reads_match_np_load"]


def npy_bytes(array: np.ndarray, how: str | tuple[int, int] = "np.save") -> bytes:
    """The bytes of ``array`` written as a ``.npy`` file (``how``: np.save, or a header version)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.npy"
        write(path, array, how)
        return path.read_bytes()


def reads_match_np_load(put: Put, data: st.DataObject) -> None:
    """A drawn array, uploaded, reads back through every key kind exactly as ``np.load`` of the same bytes."""
    array = data.draw(arrays(min_rows=1))
    body = npy_bytes(array, data.draw(st.sampled_from(["np.save", (1, 0), (3, 0)])))
    url = put("props/x.npy", body)
    expected = np.load(io.BytesIO(body))
    # Small requests and no gap merging, so most arrays take several concurrent range requests (64-byte requests
    # made some examples thousands of GETs, which moto's server serializes: minutes per example).
    gap = data.draw(st.sampled_from([0, 256]))
    remote = npyfeed.open(url, storage_options={"request_bytes": 1024, "gap_bytes": gap})
    assert (remote.shape, remote.dtype) == (expected.shape, expected.dtype)
    # Some keys are refused by NumPy itself (index arrays that do not broadcast): then npyfeed must refuse them too.
    # (Asserting on those as if they were valid made this test fail, and Hypothesis then shrank for minutes over the
    # server, about 2,000 examples of PUT + HEAD + GETs: what looked like a hang in moto.)
    check_key(remote, expected, data.draw(row_keys(expected.shape)))


def glob_columns_and_shuffled_epochs(put: Put) -> None:
    """A glob of shards and a second file as columns: shuffled epochs hold every row once, x and y aligned."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 5)).astype(np.float32)
    y = np.arange(3000, dtype=np.int64)
    for i in range(3):
        put(f"glob/x_{i:02d}.npy", x[i * 1000 : (i + 1) * 1000])
    y_url = put("glob/y.npy", y)
    put("glob/sub/x_99.npy", x[:10])  # under the prefix but not matched: * does not cross /
    source = {"x": y_url.replace("glob/y.npy", "glob/x_*.npy"), "y": y_url}
    cols = npyfeed.open(source)
    assert len(cols) == 3000 and len(cols["x"].paths) == 3
    for shuffle in ("global", "block"):
        geometry = {"block_rows": 50, "window_blocks": 4} if shuffle == "block" else {}
        loader = npyfeed.Loader(source, 128, shuffle=shuffle, seed=3, **geometry)
        for _ in range(2):
            batches = list(loader)
            ids = np.concatenate([b["y"] for b in batches])
            assert np.array_equal(np.sort(ids), y)  # every row exactly once
            for b in batches:
                assert np.array_equal(b["x"], x[b["y"]])  # x and y rows stay aligned
            assert not np.array_equal(ids, y)
