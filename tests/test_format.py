"""Hostile and unusual ``.npy`` files: every refusal is an ``NpyFormatError`` naming the file and the field.

Files are written byte by byte (``npy_bytes``), so each case states exactly what is on disk. Every refusal must
come within a second and never as a MemoryError, RecursionError, TypeError, tokenizer error or a hang.
"""

from __future__ import annotations

import os
import pickle
import stat
import struct
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import npyfeed
from npyfeed import NpyfeedError, NpyFormatError, read_header
from npyfeed.format import MAGIC, MAX_HEADER_SIZE

GOOD = "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }"
F4x3 = np.arange(3, dtype="<f4").tobytes()


def npy_bytes(header: str | bytes, version: tuple[int, int] = (1, 0), data: bytes = b"", *, pad: bool = True) -> bytes:
    """A ``.npy`` file: magic, version, little-endian header length, header (padded to 64 bytes, newline), data."""
    raw = header if isinstance(header, bytes) else header.encode("utf8" if version >= (3, 0) else "latin1")
    length_format = "<H" if version == (1, 0) else "<I"
    prefix = len(MAGIC) + 2 + struct.calcsize(length_format)
    if pad:
        raw += b" " * (-(prefix + len(raw) + 1) % 64) + b"\n"
    return MAGIC + bytes(version) + struct.pack(length_format, len(raw)) + raw + data


def header(descr: str = "'<f4'", fortran_order: str = "False", shape: str = "(3,)") -> str:
    """A header dict literal from the source text of each value."""
    return f"{{'descr': {descr}, 'fortran_order': {fortran_order}, 'shape': {shape}, }}"


@pytest.fixture
def write(tmp_path: Path):
    counter = iter(range(1_000_000))

    def write(content: bytes, name: str | None = None) -> Path:
        path = tmp_path / (name or f"case{next(counter)}.npy")
        path.write_bytes(content)
        return path

    return write


# A refusal is a header check: milliseconds. The bound catches a hang or work grown with the header's claims, not a
# slow machine (at three CI runs at once on 2 cores a refusal once took 1.05 s).
QUICK_S = 10.0


def refused(path: str | os.PathLike[str], *fragments: str, **kwargs: int) -> str:
    """Assert ``npyfeed.open`` and ``read_header`` refuse ``path`` quickly with one NpyFormatError line naming it."""
    for opener in (npyfeed.open, read_header):
        start = time.monotonic()
        with pytest.raises(NpyFormatError) as info:
            opener(path, **kwargs)
        assert time.monotonic() - start < QUICK_S, f"refusing {path} took too long"
    error = info.value
    assert isinstance(error, ValueError)
    assert isinstance(error, NpyfeedError)
    message = str(error)
    assert os.fspath(path) in message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message


class _Touch:
    """Unpickling this creates ``marker`` (what a hostile object array could do instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _touch_pickle(marker: Path) -> bytes:
    return pickle.dumps(_Touch(marker), protocol=4)


# -- sanity: the helper writes files NumPy reads ---------------------------------------------------------------
@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_helper_writes_valid_files(write, version):
    path = write(npy_bytes(GOOD, version, F4x3))
    np.testing.assert_array_equal(np.load(path), [0, 1, 2])
    h = read_header(path)
    assert (h.version, h.shape, h.dtype, h.fortran_order) == (version, (3,), np.dtype("<f4"), False)
    assert h.data_offset % 64 == 0
    assert (h.data_bytes, h.file_bytes, h.trailing_bytes) == (12, h.data_offset + 12, 0)
    np.testing.assert_array_equal(npyfeed.open(path)[:], [0, 1, 2])


# -- truncation, magic, version, header length -----------------------------------------------------------------
def test_truncated_data_names_expected_and_actual_bytes(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((4, 6), np.float32))
    full = path.stat().st_size
    os.truncate(path, full - 1)
    message = refused(path, "truncated", "needs 96 data bytes", "only 95", str(full - 1))
    assert "(4, 6)" in message


def test_truncated_to_the_header_only(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros(10, np.int64))
    os.truncate(path, 128)
    refused(path, "truncated", "needs 80 data bytes", "only 0")


def test_sparse_multi_gigabyte_header_claim_is_refused_fast(write):
    # Claims 2**40 float64s (8 TiB) in a 140-byte file: refused from sizes alone, nothing is read or allocated.
    refused(write(npy_bytes(header("'<f8'", shape=f"({2**40},)"), data=b"\0" * 12)), "truncated", str(2**43))


def test_large_sparse_file_is_opened_without_reading_it(tmp_path):
    path = tmp_path / "big.npy"
    rows = 3 << 20  # 3 GiB of float64 rows of 1 KiB, made sparse with truncate (no disk used)
    preamble = npy_bytes(header("'<f8'", shape=f"({rows}, 128)"))
    path.write_bytes(preamble)
    os.truncate(path, len(preamble) + rows * 1024)
    a = npyfeed.open(path)
    assert a.shape == (rows, 128)
    np.testing.assert_array_equal(a[[rows - 1, 0]], np.zeros((2, 128)))


@pytest.mark.parametrize(
    "content, what",
    [
        (b"", "magic string and version"),
        (b"\x93NUM", "magic string and version"),
        (MAGIC + b"\x01", "magic string and version"),
        (MAGIC + b"\x01\x00\x76", "header length"),
        (MAGIC + b"\x02\x00\x76\x00\x00", "header length"),
        (MAGIC + b"\x03\x00", "header length"),
    ],
    ids=["empty", "in-magic", "in-version", "in-v1-length", "in-v2-length", "before-v3-length"],
)
def test_file_ends_inside_the_preamble(write, content, what):
    refused(write(content), f"file ends inside the {what}", f"the file has {len(content)} bytes")


def test_file_ends_inside_the_header(write):
    content = npy_bytes(GOOD, data=F4x3)
    refused(write(content[:40]), "header length", "118", "40 bytes")


@pytest.mark.parametrize(
    "content",
    [
        b"\x93NUMPX\x01\x00" + npy_bytes(GOOD)[8:],
        b"PK\x03\x04" + b"\0" * 60,  # an .npz (zip) passed as .npy
        b"hello world, this is not an npy file\n",
        pickle.dumps([1, 2, 3]),
    ],
    ids=["one-letter-off", "zip", "text", "pickle"],
)
def test_bad_magic(write, content):
    refused(write(content), "magic string")


@pytest.mark.parametrize("version", [(0, 0), (4, 0), (1, 1), (2, 1), (3, 1), (255, 255)])
def test_bad_versions(write, version):
    content = bytearray(npy_bytes(GOOD, (2, 0), F4x3))
    content[6:8] = bytes(version)
    refused(write(bytes(content)), "format version", f"{version[0]}.{version[1]}", "1.0, 2.0 or 3.0")


@pytest.mark.parametrize(
    "version, length",
    [((1, 0), 9_000), ((1, 0), 65_535), ((2, 0), 9_999), ((3, 0), 5_000)],
)
def test_header_length_beyond_the_file(write, version, length):
    fmt = "<H" if version == (1, 0) else "<I"
    content = MAGIC + bytes(version) + struct.pack(fmt, length) + GOOD.encode() + b"\n"
    refused(write(content), "header length", str(length), f"{len(content)} bytes", max_header_size=70_000)


@pytest.mark.parametrize("version", [(2, 0), (3, 0)])
def test_header_length_of_4_gib_is_refused_without_reading(write, version):
    content = MAGIC + bytes(version) + struct.pack("<I", 2**32 - 1) + b"{"
    refused(write(content), "header length", str(2**32 - 1), f"at most {MAX_HEADER_SIZE} bytes")
    refused(write(content), "header length", "fits in the file", max_header_size=2**33)


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_header_above_the_cap_is_refused_unless_the_cap_is_raised(write, version):
    # A valid header padded past 10,000 bytes with spaces: refused by default, like NumPy...
    path = write(npy_bytes(GOOD + " " * 20_000, version, F4x3))
    length = read_header(path, max_header_size=100_000).data_offset - (10 if version == (1, 0) else 12)
    assert length > MAX_HEADER_SIZE
    refused(path, "header length", str(length), f"at most {MAX_HEADER_SIZE} bytes", "max_header_size")
    with pytest.raises(ValueError, match="max_header_size"):
        np.load(path)
    # ...and accepted when the caller raises the cap, like np.load(..., max_header_size=...).
    np.testing.assert_array_equal(npyfeed.open(path, max_header_size=length)[:], np.load(path, max_header_size=length))
    refused(path, "header length", max_header_size=length - 1)


# -- the header is a literal, never code -----------------------------------------------------------------------
def test_code_in_the_header_is_never_run(write, tmp_path):
    marker = tmp_path / "pwned"
    code = f"__import__('pathlib').Path({os.fspath(marker)!r}).touch()"
    for text in (header(descr=code), header(shape=code), f"{{{code}: 1}}", code):
        refused(write(npy_bytes(text, data=F4x3)), "header", "a Python dict literal", "ValueError")
    assert not marker.exists()


@pytest.mark.parametrize(
    "text",
    [
        header(descr="__import__('os').system('x')"),
        "dict(descr='<f4', fortran_order=False, shape=(3,))",
        header(descr="f4"),
        header(descr="np.float32"),
        header(shape="(lambda: 3)()"),
        header(shape="tuple(range(3))"),
        header(shape="(2**62, 2**62)"),
        header(shape="(3 * 1,)"),
        header(descr="f'<f{4}'"),
        header(descr="(x := '<f4')"),
        header(shape="[i for i in (3,)]"),
        "{**{'descr': '<f4'}, 'fortran_order': False, 'shape': (3,)}",
        header(shape="(3,) if True else ()"),
        header(descr="'<f4'[0:3]"),
    ],
)
def test_non_literal_headers(write, text):
    refused(write(npy_bytes(text, data=F4x3)), "header", "a Python dict literal")


@pytest.mark.parametrize(
    "text",
    ["[1, 2, 3]", "('descr', '<f4')", "'<f4'", "42", "{1, 2}", "None", "True", "...", "b'{}'"],
)
def test_header_literal_that_is_not_a_dict(write, text):
    refused(write(npy_bytes(text, data=F4x3)), "header", "a dict literal")


@pytest.mark.parametrize("text", ["", "   ", "{", "{'descr': '<f4',", "{'descr': }", "\t\x0c\x0b"])
def test_header_that_does_not_parse(write, text):
    refused(write(npy_bytes(text, data=F4x3)), "header", "a Python dict literal", "SyntaxError")


@pytest.mark.parametrize(
    "text, found",
    [
        ("{'fortran_order': False, 'shape': (3,)}", "['fortran_order', 'shape']"),
        ("{'descr': '<f4', 'shape': (3,)}", "['descr', 'shape']"),
        ("{'descr': '<f4', 'fortran_order': False}", "['descr', 'fortran_order']"),
        ("{}", "[]"),
        (GOOD[:-1] + "'extra': 1}", "'extra'"),
        (GOOD[:-1] + "0: 1}", "0"),
        ("{b'descr': '<f4', 'fortran_order': False, 'shape': (3,)}", "b'descr'"),
        ("{'Descr': '<f4', 'fortran_order': False, 'shape': (3,)}", "'Descr'"),
    ],
    ids=["no-descr", "no-fortran_order", "no-shape", "empty", "extra", "int-key", "bytes-key", "wrong-case"],
)
def test_missing_or_extra_keys(write, text, found):
    message = refused(write(npy_bytes(text, data=F4x3)), "header keys", "expected exactly")
    assert found in message.split("expected")[0]


@pytest.mark.parametrize("value", ["0", "1", "'False'", "None", "(False,)", "1.0"])
def test_fortran_order_not_a_bool(write, value):
    refused(write(npy_bytes(header(fortran_order=value), data=F4x3)), "'fortran_order'", value, "True or False")


@pytest.mark.parametrize(
    "shape",
    ["[3]", "3", "None", "'3'", "(-1,)", "(3, -2)", "(True,)", "(False, 3)", "(3.0,)", "('3',)", "((3,),)", "(1j,)"],
)
def test_shape_not_a_tuple_of_non_negative_ints(write, shape):
    refused(write(npy_bytes(header(shape=shape), data=F4x3)), "'shape'", "expected a tuple of non-negative ints")


@pytest.mark.parametrize(
    "shape",
    [(2**62, 2**62), (2**63,), (2**62,), (0, 2**63), (2**62, 0), (0, 2**40, 2**40), (2**100,)],
)
def test_overflowing_shapes(write, shape):
    # float32: 2**62 elements are 2**64 bytes. NumPy also refuses (0, 2**63): its non-zero dimensions overflow.
    refused(write(npy_bytes(header(shape=repr(shape)), data=F4x3)), "'shape'", repr(shape), "NumPy's index limit")


def test_too_many_dimensions(write):
    refused(write(npy_bytes(header(shape=repr((1,) * 65)), data=F4x3)), "'shape'", "at most 64 dimensions")
    refused(write(npy_bytes(header(shape=repr((0,) * 3000)))), "'shape'", "dimensions")
    path = write(npy_bytes(header(shape=repr((1,) * 32)), data=F4x3[:4]))
    assert npyfeed.open(path).shape == (1,) * 32


def test_huge_decimal_ints(write):
    digits = "9" * 10_000
    path = write(npy_bytes(header(shape=f"({digits},)"), (2, 0), F4x3))
    refused(path, "header length")  # over the default cap
    refused(path, "header", "a Python dict literal", max_header_size=20_000)  # Python's int-digit limit


@pytest.mark.parametrize(
    "text",
    [
        header(shape="(0x" + "f" * 4000 + ",)"),
        header(descr="0x" + "f" * 4000),
        header(fortran_order="0x" + "f" * 4000),
        GOOD[:-1] + "0x" + "f" * 4000 + ": 1}",
    ],
    ids=["shape", "descr", "fortran_order", "key"],
)
def test_huge_hex_ints_too_long_to_print(write, text):
    # Hex literals are exempt from Python's 4300-digit limit, but repr() of them is not: messages must still work.
    refused(write(npy_bytes(text, data=F4x3)), "too long to print")


@pytest.mark.parametrize(
    "value",
    ["[" * 4000 + "]" * 4000, "(" * 4000 + ")" * 4000, "{" * 4000 + "}" * 4000, "-" * 8000 + "1", "not " * 2000 + "1"],
    ids=["lists", "tuples", "dicts", "unary", "not"],
)
@pytest.mark.parametrize("field", ["descr", "shape"])
def test_deeply_nested_values_do_not_parse(write, field, value):
    refused(write(npy_bytes(header(**{field: value}), data=F4x3)), "header", "a Python dict literal")


@pytest.mark.parametrize("value", ["[" * 90 + "3" + "]" * 90, "(" * 90 + "3" + ",)" * 90], ids=["list", "tuple"])
@pytest.mark.parametrize("field", ["descr", "shape"])
def test_nested_values_that_parse_are_refused_by_field(write, field, value):
    refused(write(npy_bytes(header(**{field: value}), data=F4x3)), f"'{field}'")


@pytest.mark.parametrize("depth", [10_000, 100_000])
def test_deep_nesting_in_a_huge_trusted_header(write, depth):
    # Even with the cap lifted, deep nesting is a refusal (not a RecursionError or a crash).
    text = header(shape="[" * depth + "]" * depth)
    refused(write(npy_bytes(text, (2, 0), F4x3)), "header", max_header_size=10 * depth)


def test_null_bytes_in_the_header(write):
    refused(write(npy_bytes(GOOD.replace(" 'shape'", "\0'shape'"), data=F4x3)), "header")
    refused(write(npy_bytes(header(descr="'<f4\0'"), data=F4x3)), "'descr'")


def test_non_utf8_v3_header(write):
    raw = header(descr="'<f4'").encode().replace(b"'descr'", b"'d\xffescr'")
    refused(write(npy_bytes(raw, (3, 0), F4x3)), "header encoding", "\\xff", "utf8")


def test_latin1_v1_and_utf8_v3_field_names(write):
    name = "caf\u00e9"
    for version in [(1, 0), (3, 0)]:
        path = write(npy_bytes(header(descr=f"[({name!r}, '<f4')]"), version, F4x3))
        assert npyfeed.open(path).dtype.names == (name,)
        assert np.load(path).dtype.names == (name,)


@pytest.mark.parametrize(
    "descr",
    [
        "'<q7'",
        "'x'",
        "''",
        "5",
        "b'<f4'",
        "None",
        "[('a',)]",
        "[('a', '<f4'), ('a', '<f4')]",
        "'<M8[xx]'",
        "'|V9999999999999'",
        "[('a', '<f8', (-1,))]",
        f"[('a', '<f8', ({2**40}, {2**40}))]",
        f"[('a', '<f8', ({2**30},))]",
        "{'names': ['a'], 'formats': ['<f4']}",
        "[" * 90 + "'<f4'" + "]" * 90,
    ],
)
def test_bad_descr(write, descr):
    refused(write(npy_bytes(header(descr=descr), data=F4x3)), "'descr'", "expected a NumPy dtype description")


@pytest.mark.parametrize(
    "descr",
    [
        "'|O'",
        "'O'",
        "'<O'",
        "'object'",
        "[('a', '|O')]",
        "[('x', '<f4'), ('a', [('b', '|O')])]",
        "[('a', '|O', (2,))]",
        "('|O', (2,))",
        "'T'",
    ],
)
def test_object_dtypes_are_refused_without_unpickling(tmp_path, write, descr):
    marker = tmp_path / "unpickled"
    path = write(npy_bytes(header(descr=descr), data=_touch_pickle(marker) * 3))
    refused(path, "'descr'", "pickle")
    assert not marker.exists()


def test_a_live_pickle_payload_is_never_run(tmp_path):
    # The same payload does run under np.load(allow_pickle=True): proof the test above would see an unpickle.
    marker = tmp_path / "unpickled"
    path = tmp_path / "obj.npy"
    np.save(path, np.array([_Touch(marker)], dtype=object), allow_pickle=True)
    assert not marker.exists()
    refused(path, "'descr'", "'|O'", "pickle")
    assert not marker.exists()
    np.load(path, allow_pickle=True)
    assert marker.exists()


# -- non-regular files -----------------------------------------------------------------------------------------
def _open_with_deadline(path: Path, seconds: float = 5.0) -> BaseException | None:
    """Open ``path`` on a thread; fail the test (not hang it) if that blocks."""
    result: list[BaseException | None] = []

    def target() -> None:
        try:
            npyfeed.open(path)
            result.append(None)
        except BaseException as e:
            result.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        # Unblock a reader stuck in open() so the thread ends, then fail.
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(1)
        pytest.fail(f"opening {path} blocked for {seconds} s")
    return result[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="os.mkfifo is not available on this platform")
def test_fifo_is_refused_without_blocking(tmp_path):
    path = tmp_path / "pipe.npy"
    os.mkfifo(path)
    start = time.monotonic()
    error = _open_with_deadline(path)
    assert time.monotonic() - start < QUICK_S
    assert isinstance(error, NpyFormatError)
    assert os.fspath(path) in str(error)
    assert "not a regular file" in str(error)
    assert stat.S_ISFIFO(path.stat().st_mode)
    refused(path, "not a regular file")


def test_directory_is_refused(tmp_path):
    directory = tmp_path / "x.npy"
    directory.mkdir()
    refused(directory, "it is a directory")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero on this platform")
def test_character_device_is_refused():
    refused("/dev/zero", "not a regular file")


def test_missing_path_is_file_not_found(tmp_path):
    path = tmp_path / "missing.npy"
    for opener in (npyfeed.open, read_header):
        with pytest.raises(FileNotFoundError) as info:
            opener(path)
        assert isinstance(info.value, OSError)
        assert os.fspath(path) in str(info.value)


# -- what is accepted ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_python2_long_ints_are_accepted_before_v3(write, version):
    data = np.arange(6, dtype="<i2").tobytes()
    path = write(npy_bytes(header("'<i2'", shape="(2L, 3L)"), version, data))
    a = npyfeed.open(path)
    assert a.shape == (2, 3)
    np.testing.assert_array_equal(a[:], np.arange(6).reshape(2, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # NumPy warns that the file came from Python 2
        np.testing.assert_array_equal(np.load(path), a[:])


def test_python2_long_ints_are_refused_in_v3(write):
    refused(write(npy_bytes(header(shape="(3L,)"), (3, 0), F4x3)), "header", "SyntaxError")


def test_field_names_that_look_like_python2_ints_are_kept(write):
    path = write(npy_bytes(header("[('x 10L', '<f4'), ('y', '<f4')]"), (1, 0), b"\0" * 24))
    assert npyfeed.open(path).dtype.names == ("x 10L", "y")
    assert np.load(path).dtype.names == ("x 10L", "y")


def test_unpadded_header_and_trailing_bytes_are_accepted(write):
    path = write(npy_bytes(GOOD, data=F4x3 + b"junk", pad=False))
    h = read_header(path)
    assert h.data_offset == 10 + len(GOOD)
    assert h.trailing_bytes == 4
    np.testing.assert_array_equal(npyfeed.open(path)[:], np.load(path, mmap_mode="r"))


@pytest.mark.parametrize("fortran_order", [False, True])
def test_sub_array_descr_is_expanded_like_numpy(write, fortran_order):
    data = np.arange(12, dtype="<f4").tobytes()
    path = write(npy_bytes(header("('<f4', (2,))", repr(fortran_order), "(3, 2)"), data=data))
    oracle = np.load(path, mmap_mode="r")
    a = npyfeed.open(path)
    assert (a.shape, a.dtype) == (oracle.shape, oracle.dtype) == ((3, 2, 2), np.dtype("<f4"))
    np.testing.assert_array_equal(a[:], oracle)
    np.testing.assert_array_equal(a[[2, 0]], oracle[[2, 0]])


def test_zero_dim_array_has_a_header_but_no_rows(tmp_path):
    path = tmp_path / "scalar.npy"
    np.save(path, np.float64(3.5))
    h = read_header(path)
    assert (h.shape, h.dtype, h.data_bytes) == ((), np.dtype("<f8"), 8)
    with pytest.raises(NpyFormatError) as info:
        npyfeed.open(path)
    assert os.fspath(path) in str(info.value)
    assert "'shape'" in str(info.value)


def test_path_like_and_str_paths(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.arange(4))
    assert read_header(path) == read_header(os.fspath(path))
    assert npyfeed.open(os.fspath(path)).path == os.fspath(path)


# -- fuzzing: anything at all in the header is a clean refusal or a correct header ------------------------------
_HEADER_CHARS = st.sampled_from("{}[](),:'\" .-+_0123456789LjexfFTrueNonadsciphbO<>|=*/\\\n\t\0\xff")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.one_of(
        st.text(_HEADER_CHARS, max_size=120),
        st.text(max_size=60),
        st.builds(
            header,
            st.sampled_from(["'<f4'", "'|O'", "'<i8'", "[('a', '<f4')]", "'<U3'", "5", "'x'", "('<f4', (2,))"]),
            st.sampled_from(["False", "True", "0", "None"]),
            st.one_of(
                st.text(_HEADER_CHARS, max_size=20).map(lambda s: "(" + s + ")"),
                st.lists(st.integers(-1, 2**64), max_size=3).map(lambda dims: repr(tuple(dims))),
                st.lists(st.integers(0, 4), max_size=3).map(lambda dims: repr(tuple(dims))),
            ),
        ),
    ),
    version=st.sampled_from([(1, 0), (2, 0), (3, 0)]),
    data_len=st.integers(0, 64),
)
def test_fuzzed_headers_are_refused_cleanly_or_agree_with_numpy(write, text, version, data_len):
    path = write(npy_bytes(text.encode("utf8", "surrogatepass"), version, b"\0" * data_len))
    try:
        h = read_header(path)
    except NpyFormatError as e:
        assert os.fspath(path) in str(e)
        event("refused")
        return
    event("accepted")
    # Accepted: NumPy must read the same header, and the data must fit.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oracle = np.load(path, mmap_mode="r")
    assert (h.shape, h.dtype) == (oracle.shape, oracle.dtype)
    assert h.data_offset + h.data_bytes <= h.file_bytes


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_byte_mutations_of_a_valid_file(write, data):
    base = bytearray(npy_bytes(header("[('a', '<i2'), ('b', '>f8', (2,))]", "False", "(2, 3)"), (1, 0), b"\x01" * 108))
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.integers(0, len(base) - 1))
        base[where] = data.draw(st.integers(0, 255))
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(base))))
    path = write(bytes(base[:cut]))
    try:
        a = npyfeed.open(path)
    except NpyFormatError as e:
        assert os.fspath(path) in str(e)
        event("refused")
        return
    event("accepted")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oracle = np.load(path, mmap_mode="r")
    assert (a.shape, a.dtype) == (oracle.shape, oracle.dtype)
    np.testing.assert_array_equal(a[:], oracle)
