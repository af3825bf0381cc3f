"""npyfeed.mix: weighted shares per epoch and per batch, no repeats before a source is used up, a pure order
of (seed, epoch, position) that shuffles, shards, resumes and reads the same through the adapters."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import npyfeed
from npyfeed import ColumnMismatchError, ConfigError, Loader, Mix
from npyfeed.order.mix_order import mix_order
from npyfeed.order.orders import Order
from npyfeed.sources.mix import apportion
from test_loader import assert_resumes

SIZES = {"web": 1500, "code": 400, "tiny": 37}
WEIGHTS = {"web": 0.6, "code": 0.3, "tiny": 0.1}
BASE = {"web": 0, "code": 100_000, "tiny": 200_000}  # row ids say which source a row came from


def order_of(m: Mix, shuffle: str, seed: int) -> Order:
    """The order a Loader gives mixture ``m``."""
    return mix_order(m.counts, m.sizes, m.offsets, shuffle, seed)


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, tuple[str, str]]:
    out = {}
    for name, n in SIZES.items():
        ids = BASE[name] + np.arange(n, dtype=np.int64)
        x, y = tmp_path / f"{name}_x.npy", tmp_path / f"{name}_y.npy"
        np.save(x, (ids[:, None] * 3 + np.arange(3)).astype(np.float32))
        np.save(y, ids)
        out[name] = (str(x), str(y))
    return out


def _source_of(ids: np.ndarray) -> np.ndarray:
    return ids // 100_000


def _positions(m: Mix, seed: int, epoch: int, shuffle: str = "global") -> np.ndarray:
    """Row ids at every position of an epoch, in position order (the Loader sorts within a batch)."""
    order = order_of(m, shuffle, seed)
    rows = order.rows(epoch, 0, len(m))
    return np.asarray(m.arrays[1][rows])


def test_epoch_shares_are_the_weights_and_every_batch_holds_its_share(sources: dict[str, Any]) -> None:
    m = npyfeed.mix(sources, WEIGHTS)
    total = sum(SIZES.values())
    assert len(m) == total and m.counts == apportion(total, list(WEIGHTS.values())) and sum(m.counts) == total
    loader = Loader(m, 100, shuffle=True, seed=4)
    for epoch in range(3):
        batches = [np.asarray(b[1]) for b in loader]
        ids = np.concatenate(batches)
        counts = np.bincount(_source_of(ids), minlength=3)
        assert counts.tolist() == list(m.counts)
        for share, w in zip(counts / ids.size, WEIGHTS.values(), strict=True):
            assert abs(share - w) <= 0.01 * w
        cumulative = np.zeros(3)
        for b in batches:  # exact at the batch level: every prefix within 2 rows of its share
            cumulative += np.bincount(_source_of(b), minlength=3)
            expected = cumulative.sum() * np.array(m.counts) / total
            assert np.abs(cumulative - expected).max() <= 2, epoch


def test_rows_are_the_sources_rows(sources: dict[str, Any]) -> None:
    loader = Loader(npyfeed.mix(sources, WEIGHTS), 64, shuffle=True, seed=0)
    for x, y in loader:
        np.testing.assert_array_equal(x, (y[:, None] * 3 + np.arange(3)).astype(np.float32))


@pytest.mark.parametrize("shuffle", ["global", "none"])
def test_no_row_repeats_before_its_source_is_used_up(sources: dict[str, Any], shuffle: str) -> None:
    m = npyfeed.mix(sources, WEIGHTS)
    stream = np.concatenate([_positions(m, 9, e, shuffle) for e in range(4)])
    for s, (name, n) in enumerate(SIZES.items()):
        own = stream[_source_of(stream) == s] - BASE[name]
        cycles = [own[i : i + n] for i in range(0, own.size - n + 1, n)]
        assert len(cycles) >= 1
        for cycle in cycles:  # each full pass over a source is a permutation of its rows
            assert np.array_equal(np.sort(cycle), np.arange(n)), name
        if shuffle == "global" and len(cycles) > 1:
            assert not np.array_equal(cycles[0], cycles[1]), name  # an upsampled source wraps in a new order
        if shuffle == "none":
            assert all(np.array_equal(c, np.arange(n)) for c in cycles)
    # "web" is downsampled (900 of 1500 rows an epoch): epoch 1 carries on with the rows epoch 0 did not read
    web0 = set(_positions(m, 9, 0)[_source_of(_positions(m, 9, 0)) == 0].tolist())
    web1 = _positions(m, 9, 1)
    web1 = web1[_source_of(web1) == 0]
    assert len(web0) == m.counts[0] and len(web0 & set(web1[: SIZES["web"] - m.counts[0]].tolist())) == 0


def test_order_is_a_pure_function_of_seed_epoch_and_position(sources: dict[str, Any]) -> None:
    m = npyfeed.mix(sources, WEIGHTS)
    order = order_of(m, "global", 5)
    whole = order.rows(2, 0, len(m))
    rng = np.random.default_rng(0)
    cuts = np.unique(np.concatenate(([0, len(m)], rng.integers(0, len(m), 40))))
    pieces = np.concatenate([order.rows(2, a, b) for a, b in itertools.pairwise(cuts)])
    np.testing.assert_array_equal(pieces, whole)
    fresh = order_of(npyfeed.mix(sources, WEIGHTS), "global", 5)
    np.testing.assert_array_equal(fresh.rows(2, 100, 300), whole[100:300])
    assert not np.array_equal(order.rows(3, 0, len(m)), whole)
    assert not np.array_equal(order_of(m, "global", 6).rows(2, 0, len(m)), whole)
    # a pinned prefix, so the order never changes silently
    assert _positions(m, 5, 0)[:8].tolist() == PINNED


PINNED = [310, 88, 100012, 573, 200023, 124, 100331, 1090]


def test_resume_at_every_batch(sources: dict[str, Any]) -> None:
    def make() -> Loader:
        return Loader(npyfeed.mix(sources, WEIGHTS, epoch_rows=700), 64, shuffle=True, seed=2)

    assert_resumes(make)
    first = make()
    reference = [np.asarray(b[1]) for _ in range(2) for b in first]
    for stop in range(len(reference)):  # every position of two epochs, the epoch boundary included
        loader = make()
        it = iter(loader)
        for _ in range(stop):
            try:
                next(it)
            except StopIteration:
                it = iter(loader)
                next(it)
        state = json.loads(json.dumps(loader.get_state()))
        resumed = make()
        resumed.set_state(state)
        np.testing.assert_array_equal(next(iter(resumed))[1], reference[stop], err_msg=str(stop))


def test_shards_split_the_mixture(sources: dict[str, Any]) -> None:
    m = npyfeed.mix(sources, WEIGHTS)
    whole = Counter(np.concatenate([b[1] for b in Loader(m, 50, shuffle=True, seed=1)]).tolist())
    parts: Counter[int] = Counter()
    for i in range(3):
        for b in Loader(npyfeed.mix(sources, WEIGHTS), 50, shuffle=True, seed=1, shard=(i, 3)):
            parts.update(b[1].tolist())
    assert parts <= whole and sum(parts.values()) >= sum(whole.values()) - 3 * 50


def test_same_batches_through_torch(sources: dict[str, Any]) -> None:
    pytest.importorskip("torch")
    loader = Loader(npyfeed.mix(sources, WEIGHTS), 64, shuffle=True, seed=8)
    expected = [loader.read_batch(0, i)[1].tolist() for i in range(len(loader))]
    got = [batch[1].tolist() for batch in loader.to_torch()]
    assert got == expected


@pytest.mark.slow
def test_same_batches_through_tf_data(sources: dict[str, Any]) -> None:
    pytest.importorskip("tensorflow")
    loader = Loader(npyfeed.mix(sources, WEIGHTS), 64, shuffle=True, seed=8)
    expected = [loader.read_batch(0, i)[1].tolist() for i in range(len(loader))]
    got = [y.numpy().tolist() for _, y in loader.to_tf_dataset()]
    assert got == expected


def test_list_sources_single_arrays_and_epoch_rows(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(10))
    np.save(tmp_path / "b.npy", np.arange(100, 120))
    m = npyfeed.mix([str(tmp_path / "a.npy"), str(tmp_path / "b.npy")], [1, 3], epoch_rows=100)
    assert len(m) == 100 and m.counts == (25, 75)
    ids = np.concatenate(list(Loader(m, 10)))
    assert (ids < 100).sum() == 25 and (ids >= 100).sum() == 75


def test_bad_mixes_are_refused_clearly(sources: dict[str, Any], tmp_path: Path) -> None:
    np.save(tmp_path / "odd_x.npy", np.zeros((5, 4), np.float32))
    np.save(tmp_path / "odd_y.npy", np.zeros(5, np.int64))
    odd = {**sources, "odd": (str(tmp_path / "odd_x.npy"), str(tmp_path / "odd_y.npy"))}
    with pytest.raises(ColumnMismatchError, match=r"mix source 'odd' \(.*odd_x\.npy\): column 0 .*\(4,\).*'web'"):
        npyfeed.mix(odd, {**WEIGHTS, "odd": 1})
    with pytest.raises(ColumnMismatchError, match=r"mix source 'x'.*columns array"):
        npyfeed.mix({"web": sources["web"], "x": str(tmp_path / "odd_y.npy")}, {"web": 1, "x": 1})
    with pytest.raises(ConfigError, match=r"missing \['tiny'\], unexpected \['other'\]"):
        npyfeed.mix(sources, {"web": 1, "code": 1, "other": 1})
    with pytest.raises(
        ConfigError, match=r"weight of source 'code' must be a finite number in \(0, inf\), got 0 \(int\)"
    ):
        npyfeed.mix(sources, {**WEIGHTS, "code": 0})
    with pytest.raises(ConfigError, match="3 sources but 2 weights"):
        npyfeed.mix(list(sources.values()), [1, 2])
    with pytest.raises(ConfigError, match=r"'tiny' .*gets no row in an epoch of 10"):
        npyfeed.mix(sources, {**WEIGHTS, "tiny": 0.001}, epoch_rows=10)
    m = npyfeed.mix(sources, WEIGHTS)
    with pytest.raises(ConfigError, match="itself a mix"):
        npyfeed.mix([m, sources["web"]], [1, 1])
    with pytest.raises(ConfigError, match="split each source first"):
        npyfeed.split(m, 0.5)
    with pytest.raises(ConfigError, match="not 'block'"):
        Loader(m, 10, shuffle="block")


@pytest.mark.parametrize(("old", "new"), [(2, 3), (3, 1)])
def test_elastic_resume_of_a_mixture(sources: dict[str, Any], old: int, new: int) -> None:
    def make(shard: tuple[int, int]) -> Loader:
        return Loader(npyfeed.mix(sources, WEIGHTS), 50, shuffle=True, seed=6, shard=shard, epoch=1)

    whole = Counter(np.concatenate([b[1] for b in make((0, 1))]).tolist())
    before = [make((i, old)) for i in range(old)]
    seen: Counter[int] = Counter()
    for shard in before:
        it = iter(shard)
        for _ in range(5):
            seen.update(next(it)[1].tolist())
    states = [json.loads(json.dumps(s.get_state())) for s in before]
    after = [make((i, new)) for i in range(new)]
    for i, shard in enumerate(after):
        shard.set_state(states[i % old])
    for shard in after:
        assert shard.epoch == 1
        for batch in shard:
            seen.update(batch[1].tolist())
    assert seen <= whole  # the rest of the same epoch of the same mixture, nothing read twice
    assert sum(whole.values()) - sum(seen.values()) < new  # only the new job's tail may be left out
