"""Shards as positions in one global order: equal steps, coverage, elastic resume, fingerprints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from npyfeed import ConfigError, Loader, Shard
from npyfeed.shard import Layout

N = 1003


@pytest.fixture
def ids(tmp_path: Path) -> str:
    path = str(tmp_path / "ids.npy")
    np.save(path, np.arange(N, dtype=np.int64))
    return path


# -- the layout ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_rows", [0, 1, 7, 64, 1003])
@pytest.mark.parametrize("batch_size", [1, 10, 64, 2000])
@pytest.mark.parametrize("drop_remainder", [False, True])
@pytest.mark.parametrize("start", [0, 5, 300])
def test_layout_equal_steps_disjoint_and_covering(num_rows: int, batch_size: int, drop_remainder: bool, start: int):
    start = min(start, num_rows)
    for count in range(1, 9):
        layouts = [Layout(num_rows, batch_size, count, i, drop_remainder, start) for i in range(count)]
        steps = {len(layout) for layout in layouts}
        assert len(steps) == 1  # every worker runs the same number of steps
        taken = np.zeros(num_rows, dtype=np.int64)
        for layout in layouts:
            sizes = []
            for k in range(len(layout)):
                lo, hi = layout.positions(k)
                assert start <= lo < hi <= num_rows
                assert hi - lo <= batch_size and (not drop_remainder or hi - lo == batch_size)
                taken[lo:hi] += 1
                sizes.append(hi - lo)
            assert sum(sizes) == layout.num_positions
        assert taken.max(initial=0) <= 1 and not taken[:start].any()  # disjoint, nothing before the start
        missing = num_rows - start - int(taken.sum())
        # Only the tail is left out: fewer than count rows, or with drop_remainder fewer than count full batches.
        assert 0 <= missing < (count * batch_size if drop_remainder else count)
        if missing:
            assert not taken[num_rows - missing :].any()
        # Last batches differ by at most one row across workers.
        if steps.pop():
            last = [layout.positions(len(layout) - 1) for layout in layouts]
            assert max(b - a for a, b in last) - min(b - a for a, b in last) <= 1


def test_one_global_order_for_any_count(ids: str) -> None:
    """Shard i step k reads global batch k * count + i: the same rows as batch k * count + i of one worker."""
    single = Loader(ids, 10, shuffle=True, seed=4)
    for count in range(1, 9):
        shards = [Loader(ids, 10, shuffle=True, seed=4, shard=(i, count)) for i in range(count)]
        for k in range(shards[0].layout(1).rounds):
            for i, shard in enumerate(shards):
                np.testing.assert_array_equal(shard.read_batch(1, k), single.read_batch(1, k * count + i))


def test_the_sequential_order_is_pinned(ids: str) -> None:
    shards = [Loader(ids, 4, shard=(i, 3)) for i in range(3)]
    assert [s.read_batch(0, 0).tolist() for s in shards] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert [s.read_batch(0, 1).tolist()[0] for s in shards] == [12, 16, 20]
    assert [s.read_batch(0, len(s) - 1).tolist() for s in shards] == [[996, 997, 998], [999, 1000], [1001, 1002]]


# -- elastic resume ---------------------------------------------------------------------------------------------
def _epoch_rows(loader: Loader) -> list[np.ndarray]:
    return [np.asarray(b) for b in loader]


@pytest.mark.slow
@pytest.mark.parametrize(("old", "new"), [(4, 3), (4, 8), (2, 1), (1, 2), (3, 3), (5, 2)])
@pytest.mark.parametrize("shuffle", [False, True, "block"])
@pytest.mark.parametrize("drop_remainder", [False, True])
def test_elastic_resume_delivers_every_unconsumed_row_once(
    ids: str, old: int, new: int, shuffle: bool | str, drop_remainder: bool
) -> None:
    kwargs: dict[str, Any] = {"shuffle": shuffle, "seed": 9, "drop_remainder": drop_remainder}
    if shuffle == "block":
        kwargs["block_rows"] = 16
    steps = len(Loader(ids, 10, shard=(0, old), **kwargs))
    for step in sorted({0, 1, steps // 3, steps - 1, steps}):
        before = [Loader(ids, 10, shard=(i, old), epoch=2, **kwargs) for i in range(old)]
        seen: list[int] = []
        for shard in before:
            it = iter(shard)
            for _ in range(step):
                seen += next(it).tolist()
        states = [json.loads(json.dumps(s.get_state())) for s in before]
        assert all(s == {**states[0], "shard": s["shard"]} for s in states)  # one position, whoever saved it
        after = [Loader(ids, 10, shard=(i, new), **kwargs) for i in range(new)]
        for i, shard in enumerate(after):
            shard.set_state(states[i % old])
        if step == steps:  # the epoch was over: the state points at the start of the next one
            assert (states[0]["epoch"], states[0]["position"]) == (3, 0) and all(s.epoch == 3 for s in after)
        else:
            assert len({s.num_batches(2) for s in after}) == 1  # equal steps in the resumed epoch too
            # (a rest of the epoch too short for one step of the new job is all tail: it starts epoch 3)
            resumed = [s for s in after if s.epoch == 2]
            rest = [np.concatenate([np.empty(0, np.int64), *_epoch_rows(s)]) for s in resumed]
            got = np.concatenate([np.array(seen, dtype=np.int64), *rest])
            assert np.unique(got).size == got.size, f"a row repeated: {old}->{new} at step {step}"
            # Only the new job's tail of the resumed epoch can be left out (as in any epoch of the new job).
            assert N - got.size < (new * 10 if drop_remainder else new)
        # Then normal new-way epochs.
        for i, shard in enumerate(after):
            reference = Loader(ids, 10, shard=(i, new), epoch=shard.epoch, **kwargs)
            for a, b in zip(_epoch_rows(shard), _epoch_rows(reference), strict=True):
                np.testing.assert_array_equal(a, b)


def test_resume_exact_when_nothing_is_left_out(tmp_path: Path) -> None:
    path = str(tmp_path / "ids.npy")
    np.save(path, np.arange(960, dtype=np.int64))  # 960 = 4 x 3 x 8 x 10: no tail for 4, 3 or 8 workers
    for old, new, step in [(4, 3, 5), (4, 8, 11), (2, 1, 7), (8, 4, 1)]:
        before = [Loader(path, 10, shuffle=True, seed=1, shard=(i, old)) for i in range(old)]
        seen = [r for s in before for _, b in zip(range(step), s, strict=False) for r in b.tolist()]
        after = [Loader(path, 10, shuffle=True, shard=(i, new)) for i in range(new)]
        for s in after:
            s.set_state(before[0].get_state())
        got = seen + [r for s in after for b in s for r in b.tolist()]
        assert sorted(got) == list(range(960)), (old, new, step)


def test_same_count_resume_continues_the_same_batches(ids: str) -> None:
    a = Loader(ids, 10, shuffle=True, seed=3, shard=(1, 3))
    it = iter(a)
    for _ in range(7):
        next(it)
    b = Loader(ids, 10, shuffle=True, seed=3, shard=(1, 3))
    b.set_state(a.get_state())
    assert b.num_batches(b.next_pass[1]) == len(a) - 7
    for got, expected in zip(b, it, strict=True):
        np.testing.assert_array_equal(got, expected)


# -- the state ---------------------------------------------------------------------------------------------------
def test_state_is_small_and_json(ids: str) -> None:
    state = Loader(ids, 10, shuffle=True, seed=3, shard=(1, 3)).get_state()
    assert json.loads(json.dumps(state)) == state
    assert len(json.dumps(state)) < 400


def test_a_state_for_other_data_is_refused(tmp_path: Path) -> None:
    a, b = str(tmp_path / "a.npy"), str(tmp_path / "b.npy")
    np.save(a, np.arange(100, dtype=np.int64))
    np.save(b, np.arange(100, dtype=np.int32))  # same rows, other header
    state = Loader(a, 10).get_state()
    with pytest.raises(ConfigError, match=r"saved state is for other data .*/b\.npy"):
        Loader(b, 10).set_state(state)
    np.save(b, np.arange(100, dtype=np.int64))  # same header, other path
    with pytest.raises(ConfigError, match="saved state is for other data"):
        Loader(b, 10).set_state(state)
    np.save(a, np.arange(100, dtype=np.int64).reshape(50, 2))  # the same path rewritten
    with pytest.raises(ConfigError, match="saved state has num_rows=100 but this loader has num_rows=50"):
        Loader(a, 10).set_state(state)
    np.save(a, np.arange(100, dtype=np.float64))
    with pytest.raises(ConfigError, match="saved state is for other data"):
        Loader(a, 10).set_state(state)


def test_a_state_for_another_order_is_refused(ids: str) -> None:
    state = Loader(ids, 10, shuffle="block", block_rows=16, seed=0).get_state()
    with pytest.raises(ConfigError, match="block geometry"):
        Loader(ids, 10, shuffle="block", block_rows=32).set_state(state)
    with pytest.raises(ConfigError, match="shuffle='block' but this loader has shuffle='global'"):
        Loader(ids, 10, shuffle=True).set_state(state)
    with pytest.raises(ConfigError, match=r"saved state.s position must be an int in \[0, \d+\], got"):
        Loader(ids, 10, shuffle="block", block_rows=16).set_state({**state, "position": N + 1})
    with pytest.raises(ConfigError, match="version 2"):
        Loader(ids, 10).set_state({**state, "version": 1})


def test_tf_input_context(ids: str) -> None:
    tf = pytest.importorskip("tensorflow")
    context = tf.distribute.InputContext(num_input_pipelines=3, input_pipeline_id=2, num_replicas_in_sync=6)
    loader = Loader(ids, 10, shard=context)
    assert (loader.shard, loader.shard.source) == (Shard(2, 3), "tf.distribute.InputContext")
