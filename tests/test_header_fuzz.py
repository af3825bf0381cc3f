"""Fuzzing the header parser: mutated valid files either open as the array NumPy reads, or raise NpyfeedError.

Valid files of every format version (C and Fortran order, structured and aligned dtypes, a UTF-8 field name in
3.0) are mutated the ways a bad writer, a bad disk or an attacker would: bytes flipped, bytes inserted or
deleted, the header-length field changed, the file cut short. The only outcomes allowed: an
:class:`npyfeed.NpyfeedError` naming the file, quickly; or an array that ``np.load`` also reads, with the same
shape, dtype and bytes. Bounded for CI: a fixed number of examples of small files, each under a second.
"""

from __future__ import annotations

import io
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import npyfeed


def _file(a: np.ndarray, version: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, version=version)
    return buf.getvalue()


BASES = [
    _file(np.arange(12, dtype="<f4").reshape(3, 4), (1, 0)),
    _file(np.asfortranarray(np.arange(6, dtype=">i2").reshape(3, 2)), (1, 0)),
    # An aligned dtype with random padding bytes: they must come back as the file holds them.
    _file(np.frombuffer(np.random.default_rng(0).bytes(80), np.dtype([("a", "u1"), ("b", "<f8")], align=True)), (2, 0)),
    _file(np.ones((2, 2), np.dtype([("\u00e9t\u00e9", "<i4"), ("n", "S3")])), (3, 0)),
    _file(np.arange(4, dtype="<u8"), (2, 0)),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(BASES)))
    header_end = (
        10 + int.from_bytes(data[8:10], "little") if data[6] == 1 else 12 + int.from_bytes(data[8:12], "little")
    )
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "length", "cut", "edit"]))
        # Mostly inside the header text, where parsing happens; sometimes the preamble or the data.
        region = draw(st.sampled_from(["text"] * 6 + ["preamble", "data"]))
        lo, hi = {"preamble": (0, 12), "text": (12, header_end), "data": (header_end, len(data))}[region]
        hi = max(0, min(hi, len(data)) - 1)
        where = draw(st.integers(min(lo, hi), hi))
        if kind == "flip" and data:
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[where] = (
                draw(st.sampled_from(b"{}[](),:'\" L0123456789\n\x00\xff"))
                if draw(st.booleans())
                else (draw(st.integers(0, 255)))
            )
        elif kind == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[where : where + draw(st.integers(1, 8))]
        elif kind == "length" and len(data) >= 12:
            width = 2 if data[6] == 1 else 4
            old = int.from_bytes(data[8 : 8 + width], "little")
            new = old + draw(st.integers(-16, 16)) if draw(st.booleans()) else draw(st.integers(0, 256**width - 1))
            data[8 : 8 + width] = (new % 256**width).to_bytes(width, "little")
        elif kind == "edit" and len(data) >= 12 and data[6] in (1, 2, 3):
            # Change the header text and keep the length field consistent: parsing, not framing, is tested.
            width = 2 if data[6] == 1 else 4
            text_end = 8 + width + int.from_bytes(data[8 : 8 + width], "little")
            at = draw(st.integers(8 + width, max(8 + width, min(text_end, len(data)))))
            piece = draw(
                st.sampled_from([b" ", b"  ", b"\n", b"L", b"0", b"1", b",", b"()", b"'", b"True", b"<i8", b"2,"])
            )
            cut = draw(st.integers(0, 1))
            data[at : at + cut] = piece
            new_len = max(0, text_end - 8 - width + len(piece) - cut)
            data[8 : 8 + width] = (new_len % 256**width).to_bytes(width, "little")
        elif kind == "cut":
            del data[where:]
    return bytes(data)


def _file_bytes(path: Path, m: np.ndarray) -> bytes:
    """The data bytes of ``m`` (np.load's mapping) in C row order, straight from the file."""
    if m.size == 0 or m.dtype.itemsize == 0:
        return b""
    raw = np.fromfile(path, np.uint8)
    as_bytes = np.ndarray((*m.shape, m.dtype.itemsize), np.uint8, buffer=raw, offset=m.offset, strides=(*m.strides, 1))
    return np.ascontiguousarray(as_bytes).tobytes()


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=mutated())
def test_mutated_headers_give_the_numpy_array_or_a_clean_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fuzz.npy"
    path.write_bytes(content)
    start = time.monotonic()
    try:
        a = npyfeed.open(path)
    except npyfeed.NpyfeedError as e:
        assert os.fspath(path) in str(e)
        assert time.monotonic() - start < 1.0
        event("refused")
        return
    assert time.monotonic() - start < 1.0
    event("accepted")
    assert isinstance(a, npyfeed.NpyArray)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Python-2 headers: NumPy warns
        try:
            oracle = np.load(path, mmap_mode="r")
        except Exception as e:  # what npyfeed accepts, NumPy must read too
            pytest.fail(f"npyfeed opened {a!r} but np.load refuses it: {type(e).__name__}: {e}")
    assert (a.shape, a.dtype) == (oracle.shape, oracle.dtype)
    assert a[:].tobytes() == _file_bytes(path, oracle)
    if len(a):
        rows = np.array([len(a) - 1, 0])
        assert (
            a[rows].tobytes()
            == np.ascontiguousarray(
                np.ndarray(
                    (*oracle.shape, oracle.dtype.itemsize),
                    np.uint8,
                    buffer=np.fromfile(path, np.uint8),
                    offset=oracle.offset,
                    strides=(*oracle.strides, 1),
                )[rows]
            ).tobytes()
        )
