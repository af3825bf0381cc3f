"""The one argument rule (npyfeed.arguments), at every entry point: NumPy ints are ints, bools never are, counts
and sizes are bounded, and every failure is a ConfigError naming the argument, the value found and what was
expected. An argument that cannot apply is refused, never ignored. One size grammar for Python and the CLI."""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import npyfeed
from npyfeed import ConfigError, Loader
from npyfeed import arguments as args
from npyfeed.shard import Shard

HUGE = 10**5000  # no repr (Python refuses to print ints past 4300 digits), far past int64

# What each kind of argument refuses, and the text the message shows for it.
BAD = {
    "count": [(True, "True (bool)"), (2.0, "2.0 (float)"), ("4", "'4' (str)"), (0, "0 (int)"), (HUGE, "5001 digits")],
    "index": [(True, "True (bool)"), (np.bool_(False), "(bool)"), (-1, "-1 (int)"), (1.0, "1.0 (float)"),
              (HUGE, "5001 digits")],
    "flag": [("no", "'no' (str)"), (1, "1 (int)"), (None, "None (NoneType)")],
    "flag or None": [("no", "'no' (str)"), (0, "0 (int)")],
    "size": [(True, "True (bool)"), ("4XB", "'4XB' (str)"), (0, "0 (int)"), (1.5, "1.5 (float)"),
             (HUGE, "5001 digits")],
}  # fmt: skip


def _loader(ids_path: str, **kwargs: Any) -> Loader:
    kwargs.setdefault("seed", 1)
    return Loader(ids_path, kwargs.pop("batch_size", 10), **kwargs)


def _tf(ids_path: str, native: bool = False, **kwargs: Any) -> Any:
    pytest.importorskip("tensorflow")
    return _loader(ids_path).to_tf_dataset(native=native, **kwargs)


def _torch(ids_path: str, **kwargs: Any) -> Any:
    pytest.importorskip("torch")
    return _loader(ids_path).to_torch(**kwargs)


def _keras(ids_path: str, **kwargs: Any) -> Any:
    pytest.importorskip("keras")
    return _loader(ids_path).to_keras(**kwargs)


def _checkpoint(ids_path: str, **kwargs: Any) -> Any:
    pytest.importorskip("keras")
    from npyfeed.keras import LoaderCheckpoint

    return LoaderCheckpoint(_loader(ids_path), Path(ids_path).parent / "ckpt", **kwargs)


def _set_state(ids_path: str, **fields: Any) -> Loader:
    loader = _loader(ids_path, shuffle=True, seed=1)
    loader.set_state({**loader.get_state(), **fields})
    return loader


def _shard(ids_path: str, index: Any = 0, count: Any = 2) -> Shard:
    return Shard(index, count)


def _loader_shard(ids_path: str, index: Any = 0, count: Any = 2) -> Loader:
    return _loader(ids_path, shard=(index, count))


def _mix(ids_path: str, **kwargs: Any) -> Any:
    return npyfeed.mix([ids_path, ids_path], [1, 1], **kwargs)


_OUTPUTS = itertools.count()


def _writer(ids_path: str, **kwargs: Any) -> Any:
    target = Path(ids_path).parent / f"out{next(_OUTPUTS)}" / "w.npy"
    kwargs.setdefault("row_shape", (2,))
    with npyfeed.NpyWriter(target, "f4", **kwargs) as writer:
        writer.write(np.zeros((3, 2), "f4"))
    return writer


def _convert(ids_path: str, **kwargs: Any) -> Any:
    out = Path(ids_path).parent / f"c{next(_OUTPUTS)}" / "c.npy"
    if "shard_bytes" not in kwargs:
        out.parent.mkdir()
    from npyfeed.convert import convert

    return convert(ids_path, out, **kwargs)


Entry = Callable[..., Any]
# (entry point, argument, kind, a good value): every argument of every entry point that takes a number or a flag.
CASES: list[tuple[str, Entry, str, str, Any]] = [
    ("Loader", _loader, "batch_size", "count", 10),
    ("Loader", _loader, "epoch", "index", 3),
    ("Loader", _loader, "prefetch", "count", 4),
    ("Loader", _loader, "num_threads", "count", 2),
    ("Loader", _loader, "io_threads", "count", 4),
    ("Loader", _loader, "drop_remainder", "flag", True),
    ("Loader", _loader, "io_hints", "flag or None", False),
    ("Loader", _loader, "autotune", "flag or None", False),
    ("Loader(shuffle='block')", lambda p, **k: _loader(p, shuffle="block", **k), "block_rows", "count", 16),
    ("Loader(shuffle='block')", lambda p, **k: _loader(p, shuffle="block", **k), "window_blocks", "count", 3),
    ("Loader(shard=)", _loader_shard, "index", "index", 1),
    ("Loader(shard=)", _loader_shard, "count", "count", 2),
    ("Shard", _shard, "index", "index", 1),
    ("Shard", _shard, "count", "count", 2),
    ("set_state", _set_state, "epoch", "index", 2),
    ("set_state", _set_state, "position", "index", 20),
    ("to_tf_dataset", _tf, "start_epoch", "index", 1),
    ("to_tf_dataset", _tf, "num_parallel_calls", "count", 2),
    ("to_tf_dataset", _tf, "threads", "count", 2),
    ("to_tf_dataset", _tf, "prefetch", "count", 2),
    ("to_tf_dataset", _tf, "native", "flag", False),
    ("to_tf_dataset(native=True)", lambda p, **k: _tf(p, native=True, **k), "epochs", "count", 2),
    ("to_torch", _torch, "start_epoch", "index", 1),
    ("to_torch", _torch, "prefetch", "count", 2),
    ("to_torch", _torch, "as_tensors", "flag", False),
    ("to_keras", _keras, "start_epoch", "index", 1),
    ("to_keras", _keras, "prefetch", "count", 2),
    ("LoaderCheckpoint", _checkpoint, "save_freq", "count", 5),
    ("mix", _mix, "epoch_rows", "count", 100),
    ("NpyWriter", _writer, "shard_bytes", "size", 1024),
    ("convert", _convert, "memory_bytes", "size", 1 << 20),
    ("convert", _convert, "shard_bytes", "size", 4096),
    ("convert", _convert, "progress", "flag", False),
]
IDS = [f"{entry}-{arg}" for entry, _, arg, _, _ in CASES]


@pytest.mark.parametrize(("entry", "call", "arg", "kind", "good"), CASES, ids=IDS)
def test_every_entry_point_refuses_bad_values_naming_argument_and_value(
    ids_path: str, entry: str, call: Entry, arg: str, kind: str, good: Any
) -> None:
    for bad, shown in BAD[kind]:
        with pytest.raises(ConfigError) as raised:
            call(ids_path, **{arg: bad})
        message = str(raised.value)
        assert arg in message and shown in message and " must be " in message, (entry, arg, bad, message)


@pytest.mark.parametrize(("entry", "call", "arg", "kind", "good"), CASES, ids=IDS)
def test_every_entry_point_takes_numpy_scalars_like_python_ones(
    ids_path: str, entry: str, call: Entry, arg: str, kind: str, good: Any
) -> None:
    numpy_value = np.bool_(good) if kind.startswith("flag") else np.int64(good)
    python, numpy = call(ids_path, **{arg: good}), call(ids_path, **{arg: numpy_value})
    if isinstance(python, Loader):
        assert python.get_state() == numpy.get_state()
        assert [b.tolist() for b in python] == [b.tolist() for b in numpy]
    if isinstance(python, Shard):
        assert python == numpy and type(numpy.index) is int and type(numpy.count) is int


def test_the_three_stances_of_old_are_one(ids_path: str) -> None:
    """Once `Loader(prefetch=np.int64(4))` was accepted and `to_torch(prefetch=np.int64(4))` refused,
    `Loader(shard=(np.int64(0), 2))` accepted and `Shard(np.int64(0), 2)` refused."""
    assert Loader(ids_path, 10, prefetch=np.int64(4)).prefetch == 4
    assert Shard(np.int64(0), 2) == Loader(ids_path, 10, shard=(np.int64(0), 2)).shard == Shard(0, 2)
    pytest.importorskip("torch")
    assert Loader(ids_path, 10).to_torch(prefetch=np.int64(4)) is not None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shuffle": "yes"}, r"shuffle must be True, False, 'global' or 'block', got 'yes' \(str\)"),
        ({"shuffle": 1}, r"shuffle must be .*, got 1 \(int\)"),
        ({"seed": 1.5}, r"seed must be an int in \[-2\*\*63, 2\*\*64\) or None, got 1.5 \(float\)"),
        ({"seed": True}, r"seed must be .*got True \(bool\)"),
        ({"seed": 2**64}, r"seed must be .*got 18446744073709551616 \(int\)"),
        ({"transform": 3}, r"transform must be callable or None, got 3 \(int\)"),
        pytest.param(
            {"epoch": HUGE},
            r"epoch must be a non-negative int \(at most 2\*\*63 - 1\), got an int of about 5001 digits",
            id="huge-epoch",
        ),
        ({"shard": (0, 2000)}, r"shard count 2000 is more than the 100 batches per epoch of 1000 rows in batches"),
        ({"shard": (np.int64(2), np.int64(2))}, r"Shard.index must be an int in \[0, 1\], got np.int64\(2\) \(int64\)"),
        ({"block_rows": 16}, r"block_rows=16 cannot apply: .*shuffle is 'none' \(pass shuffle='block'\)"),
        ({"window_blocks": 2, "shuffle": True}, r"window_blocks=2 cannot apply: .*shuffle is 'global'"),
    ],
)
def test_loader_messages(ids_path: str, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Loader(ids_path, batch_size=10, **kwargs)


def test_seeds_span_64_bits_signed_or_unsigned(ids_path: str) -> None:
    """Orders take the seed modulo 2**64, so -1 and 2**64 - 1 are the same order."""
    a, b = Loader(ids_path, 10, shuffle=True, seed=-1), Loader(ids_path, 10, shuffle=True, seed=np.uint64(2**64 - 1))
    assert [x.tolist() for x in a] == [x.tolist() for x in b]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epoch", True, r"saved state's epoch must be a non-negative int, got True \(bool\)"),
        ("position", False, r"saved state's position must be an int in \[0, 1000\], got False \(bool\)"),
        ("seed", True, r"saved state's seed must be .*got True \(bool\)"),
        ("seed", None, "saved state's seed must be an int, got None"),
        pytest.param("epoch", HUGE, "saved state's epoch must be .*5001 digits", id="huge-epoch"),
        ("position", 1001, r"saved state's position must be an int in \[0, 1000\], got 1001"),
    ],
)
def test_set_state_refuses_bools_and_out_of_range_values(ids_path: str, field: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _set_state(ids_path, **{field: value})


def test_set_state_takes_numpy_ints(ids_path: str) -> None:
    loader = _set_state(ids_path, epoch=np.int64(2), position=np.int64(20), seed=np.uint32(1))
    assert loader.get_state()["epoch"] == 2 and type(loader.get_state()["epoch"]) is int


# -- arguments that cannot apply -----------------------------------------------------------------------------------
def test_storage_options_with_local_or_opened_sources_are_refused_without_their_values(ids_path: str) -> None:
    options = {"aws_secret_access_key": "hunter2", "cache_size": "1GB"}
    opened = npyfeed.open(ids_path)
    for call in (
        lambda: Loader(ids_path, 10, storage_options=options),
        lambda: Loader(opened, 10, storage_options=options),
        lambda: Loader(npyfeed.Columns({"x": ids_path}), 10, storage_options=options),
        lambda: npyfeed.open(ids_path, storage_options=options),
        lambda: npyfeed.split(ids_path, 0.5, storage_options=options),
        lambda: npyfeed.mix([ids_path, opened], [1, 1], storage_options=options),
    ):
        with pytest.raises(ConfigError, match=r"storage_options=\{keys \['aws_secret_access_key', 'cache_size'\]\} "
                           "cannot apply: .*opens no URL") as raised:  # fmt: skip
            call()
        assert "hunter2" not in str(raised.value)
    with pytest.raises(ConfigError, match="storage_options must be a dict or None, got str"):
        npyfeed.open(ids_path, storage_options="endpoint=x")
    assert len(Loader(ids_path, 10, storage_options={})) == 100  # nothing to apply: nothing to refuse


def test_native_tf_dataset_refuses_the_numpy_function_pipelines_settings(ids_path: str) -> None:
    pytest.importorskip("tensorflow")
    loader = Loader(ids_path, 10)
    for name in ("threads", "prefetch"):
        with pytest.raises(ConfigError, match=f"{name}=4 cannot apply: .*native=True"):
            loader.to_tf_dataset(native=True, **{name: 4})
    with pytest.raises(ConfigError, match="epochs=2 cannot apply: it applies to native=True"):
        loader.to_tf_dataset(epochs=2)


# -- the other arguments of mix, split, NpyWriter --------------------------------------------------------------------
def test_mix_split_and_writer_messages(ids_path: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"mix weight of source 1 must be a finite number in \(0, inf\), got True"):
        npyfeed.mix([ids_path, ids_path], [1, True])
    with pytest.raises(ConfigError, match=r"mix weight of source 0 must be .*got nan \(float\)"):
        npyfeed.mix([ids_path, ids_path], [float("nan"), 1])
    with pytest.raises(ConfigError, match=r"split fraction must be a finite number in \(0, 1\), got 1.0 \(float\)"):
        npyfeed.split(ids_path, 1.0)
    with pytest.raises(ConfigError, match=r"split row count must be an int in \[0, 1000\], got True \(bool\)"):
        npyfeed.split(ids_path, True)
    assert [len(p) for p in npyfeed.split(ids_path, np.int64(300))] == [300, 700]
    with pytest.raises(ConfigError, match=r"w.npy: row_shape\[1\] must be a non-negative int, got True \(bool\)"):
        npyfeed.NpyWriter(tmp_path / "w.npy", "f4", (2, True))
    with pytest.raises(ConfigError, match=r"w.npy: casting must be one of 'no', .*got 'sometimes' \(str\)"):
        npyfeed.NpyWriter(tmp_path / "w.npy", "f4", casting="sometimes")  # type: ignore[arg-type]


# -- sizes -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4MB", 4_000_000),
        ("4MiB", 4_194_304),
        ("4M", 4_000_000),
        ("4Mi", 4_194_304),
        ("4mib", 4_194_304),
        (" 2 GB ", 2_000_000_000),
        ("1.5KiB", 1536),
        ("0.5kB", 500),
        ("512", 512),
        ("512B", 512),
        ("1TiB", 2**40),
        ("3PB", 3 * 10**15),
        (np.int64(7), 7),
    ],
)
def test_the_size_grammar(text: Any, expected: int) -> None:
    assert args.size("x", text) == expected


@pytest.mark.parametrize("text", ["0.3B", "1.0001KB", "4XB", "", "-1", "4 M B", "1e6", "MB", "10000PiB"])
def test_sizes_the_grammar_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match=f"x must be .*got {text!r}"):
        args.size("x", text)


def test_the_cli_and_python_read_sizes_alike(ids_path: str, tmp_path: Path) -> None:
    from npyfeed.cli.main import _parser

    parser = _parser()
    parsed = parser.parse_args(
        ["convert", ids_path, str(tmp_path / "o.npy"), "--shard-size", "4MB", "--memory", "4MiB"]
    )
    assert (parsed.shard_size, parsed.memory) == (4_000_000, 4_194_304)
    parsed = parser.parse_args(["bench", "x.npy", "--storage-option", "request_bytes=4MB"])
    assert parsed.storage_option == [("request_bytes", 4_000_000)]
    with pytest.raises(SystemExit):
        parser.parse_args(["convert", ids_path, str(tmp_path / "o.npy"), "--memory", "4XB"])


def test_a_cli_size_error_says_what_is_expected() -> None:
    from npyfeed.cli.main import _size

    with pytest.raises(argparse.ArgumentTypeError, match=r"size must be .*'4MB' \(4 \* 10\*\*6 bytes\).*got '4XB'"):
        _size("4XB")


# -- shards and transforms: checked at construction or at the first batch ------------------------------------------
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


# -- storage_options reach every way of opening data ----------------------------------------------------------------
def test_storage_options_reach_split_mix_convert_and_inspect(moto_server: Any, tmp_path: Path, ids_path: str) -> None:
    """A local chunk cache in storage_options is visible on disk: each way of opening an s3:// URL must use it."""
    pytest.importorskip("obstore")
    import io

    from npyfeed.cli.main import main
    from npyfeed.convert import convert
    from servers import environment

    x = np.arange(4000, dtype=np.int64)
    body = io.BytesIO()
    np.save(body, x)
    with environment(moto_server.env):
        moto_server.client().create_bucket(Bucket="npyfeed-arguments")
        moto_server.client().put_object(Bucket="npyfeed-arguments", Key="x.npy", Body=body.getvalue())
        url = "s3://npyfeed-arguments/x.npy"

        def cached(name: str) -> dict[str, Any]:
            return {"cache_dir": str(tmp_path / name), "cache_size": "10MB", "cache_chunk_bytes": "64KiB"}

        def chunks(name: str) -> int:
            return sum(p.is_file() for p in (tmp_path / name).rglob("*"))

        _, rest = npyfeed.split(url, 0.25, storage_options=cached("split"))
        assert np.array_equal(rest[:], x[1000:]) and chunks("split") > 0
        mixed = npyfeed.mix([url, ids_path], [1, 1], storage_options=cached("mix"))  # the local source: no options
        assert np.array_equal(mixed[:4000], x) and chunks("mix") > 0
        result = convert(url, tmp_path / "c.npy", storage_options=cached("convert"))
        assert np.array_equal(np.load(tmp_path / "c.npy"), x) and result.rows == 4000 and chunks("convert") > 0
        assert main(["inspect", url, "--storage-option", f"cache_dir={tmp_path / 'inspect'}"]) == 0
        assert chunks("inspect") > 0
    with pytest.raises(ConfigError, match=r"storage_options=\{keys \['cache_dir'\]\} cannot apply: .*\.npz"):
        convert("a.npz:x", tmp_path / "d.npy", storage_options={"cache_dir": "c"})
