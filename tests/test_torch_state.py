"""``state_dict()``/``load_state_dict()`` on ``loader.to_torch()``, through torchdata's StatefulDataLoader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from npyfeed import ConfigError, Loader

torch = pytest.importorskip("torch")
stateful = pytest.importorskip("torchdata.stateful_dataloader")

N = 203
# torchdata 0.11 calls torch.set_vital, which torch 2.13 deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")


@pytest.fixture
def ids(tmp_path: Path) -> str:
    path = str(tmp_path / "ids.npy")
    np.save(path, np.arange(N, dtype=np.int64))
    return path


def _rows(batches: list[object]) -> list[list[int]]:
    return [b.tolist() for b in batches]  # type: ignore[attr-defined]


@pytest.mark.parametrize("stop", [0, 1, 7, 20, 21, 22, 40])
def test_stateful_dataloader_resumes_exactly(ids: str, stop: int) -> None:
    def make() -> object:
        return stateful.StatefulDataLoader(Loader(ids, 10, shuffle=True, seed=2).to_torch(), batch_size=None)

    reference = make_iter(make(), 3)[:60]
    dl = make()
    got: list[object] = []
    it = iter(dl)  # type: ignore[call-overload]
    while len(got) < stop:
        try:
            got.append(next(it))
        except StopIteration:
            it = iter(dl)  # type: ignore[call-overload]
    state = json.loads(json.dumps(dl.state_dict()))  # type: ignore[attr-defined]
    resumed = make()
    resumed.load_state_dict(state)  # type: ignore[attr-defined]
    rest = make_iter(resumed, 4)
    assert _rows(got + rest[: 60 - stop]) == _rows(reference)


def make_iter(dl: object, epochs: int) -> list[object]:
    return [b for _ in range(epochs) for b in dl]  # type: ignore[attr-defined]


def test_state_dict_restores_on_another_shard_count(ids: str) -> None:
    old = [Loader(ids, 10, shuffle=True, seed=5, shard=(i, 2)).to_torch() for i in range(2)]
    seen = []
    for dataset in old:
        it = iter(dataset)
        seen += [r for _ in range(4) for r in next(it).tolist()]
    states = [d.state_dict() for d in old]
    assert states[0]["position"] == states[1]["position"] == 80
    new = Loader(ids, 10, shuffle=True, shard=(0, 1)).to_torch()
    new.load_state_dict(states[1])
    rest = [r for b in new for r in b.tolist()]
    assert sorted(seen + rest) == list(range(N))
    assert new.state_dict()["epoch"] == 1 and new.epoch == 1


def test_a_workers_state_is_its_own_position(ids: str) -> None:
    """In a DataLoader worker, state_dict() is that worker's position (StatefulDataLoader keeps one per worker);
    it restores only into a worker of a DataLoader with as many workers."""
    dataset = Loader(ids, 10).to_torch()

    class Probe(torch.utils.data.IterableDataset):  # type: ignore[misc]
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield dataset.state_dict()

    (state,) = list(torch.utils.data.DataLoader(Probe(), batch_size=None, num_workers=1))
    assert state == {"npyfeed_worker": {"epoch": 0, "offset": 0, "delivered": 0, "num_workers": 1}}
    with pytest.raises(ConfigError, match="num_workers=1"):
        dataset.load_state_dict(state)
