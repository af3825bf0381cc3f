"""Bad arguments get a clear ConfigError at construction or at the first batch; Python and NumPy ints alike."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from npyfeed import ConfigError, Loader


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"drop_remainder": "no"}, r"drop_remainder must be True or False, got 'no' \(str\)"),
        ({"drop_remainder": 1}, r"drop_remainder must be True or False, got 1 \(int\)"),
        ({"drop_remainder": None}, "drop_remainder must be True or False"),
        ({"io_hints": "yes"}, r"io_hints must be True, False or None, got 'yes'"),
        ({"io_hints": 0}, "io_hints must be True, False or None"),
        ({"shuffle": "yes"}, "shuffle must be True, False, 'global' or 'block'"),
        ({"shuffle": 1}, "shuffle must be"),
        ({"epoch": -1}, "epoch must be a non-negative int"),
        ({"epoch": 2.0}, r"epoch must be a non-negative int, got 2.0 \(float\)"),
        ({"epoch": True}, "epoch must be a non-negative int"),
        ({"epoch": np.bool_(True)}, "epoch must be a non-negative int"),
        ({"seed": 1.5}, "seed must be an int or None"),
        ({"seed": True}, "seed must be an int or None"),
        ({"prefetch": np.float64(2)}, "prefetch must be a positive int"),
        ({"num_threads": np.int64(0)}, "num_threads must be a positive int"),
        (
            {"shard": (0, 2000)},
            r"shard count 2000 is more than the 100 batches per epoch of 1000 rows in batches of 10",
        ),
        ({"shard": (np.int64(5), np.int64(101))}, "shard count 101 is more than the 100 batches"),
    ],
)
def test_bad_arguments_raise_config_error_at_construction(ids_path: str, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Loader(ids_path, batch_size=10, **kwargs)


def test_numpy_ints_and_bools_are_accepted_like_python_ones(ids_path: str) -> None:
    a = Loader(ids_path, batch_size=np.int64(10), epoch=np.int64(3), seed=np.uint32(7), shuffle=np.bool_(True),
               drop_remainder=np.bool_(False), io_hints=np.bool_(False), prefetch=np.int32(4),
               shard=(np.int64(1), np.int64(2)))  # fmt: skip
    b = Loader(ids_path, batch_size=10, epoch=3, seed=7, shuffle=True, drop_remainder=False, io_hints=False, prefetch=4,
               shard=(1, 2))  # fmt: skip
    assert a.epoch == b.epoch == 3 and type(a.epoch) is int and a.seed == b.seed == 7
    assert a.drop_remainder is False and a.io_hints is False and a.shard == b.shard
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_as_many_shards_as_batches_is_fine(ids_path: str) -> None:
    loaders = [Loader(ids_path, batch_size=10, shard=(i, 100)) for i in range(100)]
    assert all(len(loader) == 1 for loader in loaders)
    assert sorted(np.concatenate([next(iter(loader)) for loader in loaders]).tolist()) == list(range(1000))


@pytest.mark.parametrize("batches_per_read", ["many", "one"])
def test_a_transform_returning_other_rows_fails_at_the_first_batch(
    ids_path: str, batches_per_read: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if batches_per_read == "one":
        monkeypatch.setattr("npyfeed.loader.loader._READ_BYTES", 1)
    loader = Loader(ids_path, batch_size=10, transform=lambda b: b[b % 2 == 0])
    with pytest.raises(
        ConfigError, match=r"transform returned 5 rows for batch 0 of epoch 0 \(.*ids\.npy\), expected 10"
    ):
        next(iter(loader))
    dict_loader = Loader((ids_path, ids_path), batch_size=10, transform=lambda b: {"x": b[0], "y": b[1][:3]})
    with pytest.raises(ConfigError, match="transform returned 3 rows for batch 0"):
        next(iter(dict_loader))


def test_a_transform_may_change_everything_but_the_rows(ids_path: str) -> None:
    loader = Loader(ids_path, batch_size=10, transform=lambda b: {"x": b[:, None] * 2.0, "n": np.float32(len(b))})
    first = next(iter(loader))
    assert first["x"].shape == (10, 1) and first["n"] == 10
