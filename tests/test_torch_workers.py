"""``to_torch()`` under ``DataLoader(num_workers=2)`` with every start method, local files and S3 (cached or not).

Every epoch must deliver every row exactly once, in the loader's batch order, over several epochs; fresh worker
processes (``persistent_workers=False``) continue the epoch count. The files are tiny: a spawned worker's start-up
(importing torch) is what these tests pay for, so each runs two epochs and no more workers than the issue asks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import npyfeed  # noqa: E402
from npyfeed.errors import ConfigError  # noqa: E402
from servers import MotoS3  # noqa: E402

pytestmark = pytest.mark.slow

N = 53  # 6 batches of 10, the last one partial: two workers read 3 batches each
BUCKET = "npyfeed-torch-workers"
EPOCHS = 2


def source(where: str, ids_path: str, tmp_path: Path, s3: MotoS3 | None) -> npyfeed.Loader:
    if where == "local":
        return npyfeed.Loader(ids_path, batch_size=10, shuffle=True, seed=7)
    assert s3 is not None
    client = s3.client()
    client.create_bucket(Bucket=BUCKET)
    client.upload_file(ids_path, BUCKET, f"{tmp_path.name}/ids.npy")
    options = {"cache_dir": str(tmp_path / "cache")} if where == "s3-cached" else None
    url = f"s3://{BUCKET}/{tmp_path.name}/ids.npy"
    return npyfeed.Loader(url, batch_size=10, shuffle=True, seed=7, storage_options=options)


def workers(loader: npyfeed.Loader, context: str, persistent: bool) -> Any:
    return torch.utils.data.DataLoader(
        loader.to_torch(),
        batch_size=None,
        num_workers=2,
        multiprocessing_context=context,
        persistent_workers=persistent,
    )


@pytest.fixture
def s3_or_none(request: pytest.FixtureRequest, where: str) -> MotoS3 | None:
    return request.getfixturevalue("s3") if where != "local" else None


# fork over an object store is refused instead: test_fork_over_an_object_store_names_spawn
WORKING = [
    (context, where)
    for context in ("fork", "spawn", "forkserver")
    for where in ("local", "s3", "s3-cached")
    if context != "fork" or where == "local"
]


@pytest.mark.parametrize(("context", "where"), WORKING)
def test_every_row_once_per_epoch(
    context: str, where: str, ids_path: str, tmp_path: Path, s3_or_none: MotoS3 | None
) -> None:
    loader = source(where, ids_path, tmp_path, s3_or_none)
    # spawn, local: fresh workers every epoch (the epoch count crosses processes in shared memory, as it must
    # for every start method); the others keep their workers, which spares seconds of start-up per epoch.
    data = workers(loader, context, persistent=(context, where) != ("spawn", "local"))
    expected = [[loader.read_batch(e, i).tolist() for i in range(len(loader))] for e in range(EPOCHS)]
    got = [[batch.tolist() for batch in data] for _ in range(EPOCHS)]
    assert got == expected
    for epoch in got:
        assert sorted(row for batch in epoch for row in batch) == list(range(N))
    assert expected[0] != expected[1]  # two different shuffles, so a repeated epoch would show


@pytest.mark.parametrize("where", ["s3", "s3-cached"])
def test_fork_over_an_object_store_names_spawn(
    where: str, ids_path: str, tmp_path: Path, s3_or_none: MotoS3 | None
) -> None:
    """obstore's runtime does not survive fork: the worker refuses (never hangs) and says what to use instead."""
    loader = source(where, ids_path, tmp_path, s3_or_none)
    with pytest.raises(ConfigError, match="multiprocessing_context='spawn'"):
        list(workers(loader, "fork", persistent=False))


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")  # torchdata 0.11 on torch 2.13
@pytest.mark.parametrize(("context", "stop"), [("fork", 0), ("fork", 3), ("fork", 6), ("spawn", 3)])
def test_stateful_dataloader_resumes_with_workers(context: str, stop: int, ids_path: str) -> None:
    """torchdata's StatefulDataLoader with workers: each worker's position is snapshotted with the batches it
    delivers; a new DataLoader restored from it delivers the rest of the epoch, then whole epochs."""
    stateful = pytest.importorskip("torchdata.stateful_dataloader")

    def data() -> tuple[npyfeed.Loader, Any]:
        loader = npyfeed.Loader(ids_path, batch_size=10, shuffle=True, seed=7)
        dl = stateful.StatefulDataLoader(
            loader.to_torch(), batch_size=None, num_workers=2, multiprocessing_context=context, persistent_workers=True
        )
        return loader, dl

    loader, first = data()
    expected = [[loader.read_batch(e, i).tolist() for i in range(len(loader))] for e in range(2)]
    it = iter(first)
    taken = [next(it).tolist() for _ in range(stop)]  # 0: before any batch; 6: the whole first epoch
    state = first.state_dict()
    del it, first
    _, second = data()
    second.load_state_dict(state)
    rest = [batch.tolist() for batch in second]  # the rest of the epoch the state was taken in (maybe none)
    assert taken + rest == expected[0]
    assert [batch.tolist() for batch in second] == expected[1]
