"""``npyfeed inspect``: what it prints for valid files, and one stderr line (no traceback) per bad one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest

import npyfeed
from npyfeed.cli import main


def fields(text: str) -> dict[str, str]:
    """The ``  name  value`` lines of one file's report."""
    return {line[2:17].strip(): line[18:] for line in text.splitlines() if line.startswith("  ")}


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.npy"
    np.save(path, np.zeros((10, 3, 2), dtype="<f4"))
    return path


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "bad.npy"
    np.save(path, np.zeros((10, 3), dtype="<f8"))
    os.truncate(path, path.stat().st_size - 8)
    return path


def test_inspect_a_valid_file(good, capsys):
    assert main(["inspect", str(good)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines()[0] == str(good)
    assert fields(out) == {
        "format version": "1.0",
        "dtype": "float32 '<f4' (little-endian)",
        "shape": "(10, 3, 2)",
        "rows": "10",
        "row bytes": "24",
        "order": "C",
        "header bytes": "128 (data offset)",
        "data bytes": "240",
        "file size": "368 bytes",
        "valid": "yes",
    }


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_inspect_versions_fortran_order_and_big_endian(tmp_path, capsys, version):
    path = tmp_path / "f.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array(f, np.asfortranarray(np.zeros((4, 5), dtype=">i8")), version=version)
    assert main(["inspect", str(path)]) == 0
    report = fields(capsys.readouterr().out)
    assert report["format version"] == f"{version[0]}.{version[1]}"
    assert report["dtype"] == "int64 '>i8' (big-endian)"
    assert report["order"] == "Fortran"
    assert (report["rows"], report["row bytes"], report["data bytes"]) == ("4", "40", "160")
    assert report["header bytes"].split()[0] == str(npyfeed.read_header(path).data_offset)


def test_inspect_structured_and_string_dtypes(tmp_path, capsys):
    structured = tmp_path / "s.npy"
    np.save(structured, np.zeros(3, dtype=[("a", "<i4"), ("b", ">f8", (2,)), ("c", "S3")]))
    strings = tmp_path / "b.npy"
    np.save(strings, np.zeros(3, dtype="S5"))
    assert main(["inspect", str(structured), str(strings)]) == 0
    first, second = capsys.readouterr().out.split("\n\n")
    assert fields(first)["dtype"] == "[('a', '<i4'), ('b', '>f8', (2,)), ('c', '|S3')] (mixed byte order)"
    assert fields(first)["row bytes"] == "23"
    assert fields(second)["dtype"] == "'|S5' (no byte order)"


def test_trailing_bytes_are_shown_only_when_present(good, capsys):
    assert main(["inspect", str(good)]) == 0
    assert "trailing bytes" not in fields(capsys.readouterr().out)
    with open(good, "ab") as f:
        f.write(b"extra")
    assert main(["inspect", str(good)]) == 0
    report = fields(capsys.readouterr().out)
    assert report["trailing bytes"] == "5 (after the array data, ignored)"
    assert report["file size"] == "373 bytes"
    assert report["valid"] == "yes"


def test_zero_dim_array_is_inspectable(tmp_path, capsys):
    path = tmp_path / "scalar.npy"
    np.save(path, np.float64(1.5))
    assert main(["inspect", str(path)]) == 0
    report = fields(capsys.readouterr().out)
    assert report["shape"] == "()"
    assert report["rows"].startswith("none")
    assert report["data bytes"] == "8"


def test_invalid_file_is_one_stderr_line_and_status_1(bad, capsys):
    assert main(["inspect", str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"npyfeed inspect: {bad}: truncated .npy")
    assert "needs 240 data bytes" in err
    assert "only 232" in err


def test_missing_file_is_one_stderr_line(tmp_path, capsys):
    missing = tmp_path / "missing.npy"
    assert main(["inspect", str(missing)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"npyfeed inspect: {missing}: cannot open: No such file or directory\n"


def test_directory_is_refused(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"npyfeed inspect: {tmp_path}: cannot read as .npy: it is a directory\n"


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"", "file ends inside the magic string"),
        (b"PK\x03\x04" + b"\0" * 60, "magic string"),
        (b"\x93NUMPY\x09\x00" + b"\0" * 60, "format version"),
        (b"\x93NUMPY\x01\x00\x10\x00{'descr': 5}    \n", "header keys"),
        (b"\x93NUMPY\x01\x00\x10\x00__import__('x')\n", "header"),
        (b"\x93NUMPY\x03\x00\x04\x00\x00\x00\xff\xfe\xfd\n", "header encoding"),
    ],
    ids=["empty", "zip", "version", "keys", "code", "encoding"],
)
def test_hostile_files_never_print_a_traceback(tmp_path, capsys, content, fragment):
    path = tmp_path / "hostile.npy"
    path.write_bytes(content)
    assert main(["inspect", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"npyfeed inspect: {path}: ")
    assert fragment in err


def test_several_files_continue_after_failures(good, bad, tmp_path, capsys):
    missing = tmp_path / "missing.npy"
    other = tmp_path / "other.npy"
    np.save(other, np.arange(7, dtype=np.uint8))
    assert main(["inspect", str(good), str(bad), str(missing), str(other)]) == 1
    out, err = capsys.readouterr()
    reports = out.split("\n\n")
    assert [r.splitlines()[0] for r in reports] == [str(good), str(other)]
    assert fields(reports[1])["rows"] == "7"
    errors = err.splitlines()
    assert len(errors) == 2
    assert errors[0].startswith(f"npyfeed inspect: {bad}: ")
    assert errors[1].startswith(f"npyfeed inspect: {missing}: ")


def test_json_output(good, bad, tmp_path, capsys):
    big = tmp_path / "big.npy"
    with open(big, "wb") as f:
        np.lib.format.write_array(f, np.ones((2, 2), dtype=">u2"), version=(2, 0))
    assert main(["inspect", "--json", str(good), str(bad), str(big)]) == 1
    out, err = capsys.readouterr()
    reports = json.loads(out)
    assert [r["valid"] for r in reports] == [True, False, True]
    assert reports[0] == {
        "path": str(good),
        "version": "1.0",
        "dtype": "float32 '<f4'",
        "descr": "<f4",
        "byte_order": "little-endian",
        "shape": [10, 3, 2],
        "rows": 10,
        "row_bytes": 24,
        "order": "C",
        "header_bytes": 128,
        "data_bytes": 240,
        "file_bytes": 368,
        "trailing_bytes": 0,
        "advice": [],
        "valid": True,
    }
    assert reports[1]["path"] == str(bad)
    assert reports[1]["error"].startswith(f"{bad}: truncated .npy")
    assert err.splitlines() == [f"npyfeed inspect: {reports[1]['error']}"]
    assert (reports[2]["version"], reports[2]["byte_order"], reports[2]["descr"]) == ("2.0", "big-endian", ">u2")
    assert [a.split(":")[0] for a in reports[2]["advice"]] == ["non-native byte order"]


def test_json_all_valid_exits_0(good, capsys):
    assert main(["inspect", "--json", str(good)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["rows"] == 10


def test_max_header_size(tmp_path, capsys):
    path = tmp_path / "wide.npy"
    np.save(path, np.zeros(2, dtype=[(f"field_{i:04d}", "<f4") for i in range(600)]))
    header_bytes = npyfeed.read_header(path, max_header_size=1 << 20).data_offset
    assert main(["inspect", str(path)]) == 1
    assert "max_header_size" in capsys.readouterr().err
    assert main(["inspect", "--max-header-size", str(header_bytes), str(path)]) == 0
    assert fields(capsys.readouterr().out)["header bytes"] == f"{header_bytes} (data offset)"


def test_usage_errors_and_version(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["inspect"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"npyfeed {npyfeed.__version__}"


def test_console_script_points_at_main():
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "npyfeed"]
    assert script.value == "npyfeed.cli:main"
    assert script.load() is main


def test_python_dash_m(good, bad):
    result = subprocess.run(
        [sys.executable, "-m", "npyfeed", "inspect", str(good), str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == str(good)
    assert fields(result.stdout)["valid"] == "yes"
    assert result.stderr.startswith(f"npyfeed inspect: {bad}: truncated .npy")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
