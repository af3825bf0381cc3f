"""shard="auto": each engine and launcher asked in order, and every half or inconsistent environment refused."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from npyfeed import ConfigError, Loader, Shard
from npyfeed.launcher import resolve


@pytest.fixture
def ids(tmp_path: Path) -> str:
    path = str(tmp_path / "ids.npy")
    np.save(path, np.arange(100, dtype=np.int64))
    return path


_ENV = ("TF_CONFIG", "RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS")


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    for module in ("torch.distributed", "jax", "ray.train"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    return monkeypatch


def _fake_torch(rank: int, size: int, initialized: bool = True) -> Any:
    return types.SimpleNamespace(
        is_available=lambda: True,
        is_initialized=lambda: initialized,
        get_rank=lambda: rank,
        get_world_size=lambda: size,
    )


def test_auto_defaults_to_one_worker(clean: pytest.MonkeyPatch, ids: str) -> None:
    assert resolve() == (0, 1, "default")
    loader = Loader(ids, 10, shard="auto")
    assert (loader.shard, loader.shard.source) == (Shard(0, 1), "default")


def test_auto_from_each_source_in_order(clean: pytest.MonkeyPatch, ids: str) -> None:
    clean.setenv("SLURM_PROCID", "3")
    clean.setenv("SLURM_NTASKS", "4")
    assert resolve() == (3, 4, "SLURM_PROCID/SLURM_NTASKS")
    clean.setenv("RANK", "1")
    clean.setenv("WORLD_SIZE", "2")
    assert resolve() == (1, 2, "RANK/WORLD_SIZE")
    cluster = {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2", "127.0.0.1:3"]}
    clean.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert resolve() == (2, 3, "TF_CONFIG")  # the chief is worker 0
    context = types.SimpleNamespace(get_world_rank=lambda: 0, get_world_size=lambda: 5)
    clean.setitem(sys.modules, "ray.train", types.SimpleNamespace(get_context=lambda: context))
    assert resolve() == (0, 5, "ray.train")
    distributed = types.SimpleNamespace(is_initialized=lambda: True)
    jax = types.SimpleNamespace(distributed=distributed, process_count=lambda: 2, process_index=lambda: 1)
    clean.setitem(sys.modules, "jax", jax)
    assert resolve() == (1, 2, "jax.distributed")
    clean.setitem(sys.modules, "torch.distributed", _fake_torch(1, 2))
    assert resolve() == (1, 2, "torch.distributed")
    assert Loader(ids, 10, shard="auto").shard == Shard(1, 2)


def test_auto_skips_engines_that_are_not_running(clean: pytest.MonkeyPatch) -> None:
    clean.setitem(sys.modules, "torch.distributed", _fake_torch(0, 4, initialized=False))
    distributed = types.SimpleNamespace(is_initialized=lambda: False)
    clean.setitem(sys.modules, "jax", types.SimpleNamespace(distributed=distributed, process_count=lambda: 1 / 0))

    def outside() -> Any:
        raise RuntimeError("not in a Ray Train worker")

    clean.setitem(sys.modules, "ray.train", types.SimpleNamespace(get_context=outside))
    clean.setenv(
        "TF_CONFIG", json.dumps({"cluster": {"worker": ["a", "b"]}, "task": {"type": "evaluator", "index": 0}})
    )
    assert resolve() == (0, 1, "default")


def test_an_engine_that_disagrees_with_the_launcher_is_refused(clean: pytest.MonkeyPatch) -> None:
    clean.setitem(sys.modules, "torch.distributed", _fake_torch(1, 2))
    clean.setenv("RANK", "1")
    clean.setenv("WORLD_SIZE", "4")
    with pytest.raises(ConfigError, match=r"torch.distributed says worker 1 of 2, but RANK/WORLD_SIZE say 1 of 4"):
        resolve()
    clean.setitem(sys.modules, "torch.distributed", _fake_torch(2, 1))
    clean.delenv("RANK")
    clean.delenv("WORLD_SIZE")
    with pytest.raises(ConfigError, match=r"torch.distributed gave worker 2 of 1, outside \[0, 1\)"):
        resolve()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RANK": "1"}, r"RANK='1' is set but WORLD_SIZE is not; a launcher sets both"),
        ({"WORLD_SIZE": "4"}, r"WORLD_SIZE='4' is set but RANK is not"),
        ({"SLURM_PROCID": "3"}, r"SLURM_PROCID='3' is set but SLURM_NTASKS is not"),
        ({"SLURM_NTASKS": "8"}, r"SLURM_NTASKS='8' is set but SLURM_PROCID is not"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, r"RANK='2' and WORLD_SIZE='2' are not a worker of a world"),
        ({"RANK": "-1", "WORLD_SIZE": "2"}, r"RANK='-1' and WORLD_SIZE='2'"),
        ({"RANK": "0", "WORLD_SIZE": "0"}, r"RANK=.0. and WORLD_SIZE=.0. .* WORLD_SIZE at least 1"),
        ({"SLURM_PROCID": "4", "SLURM_NTASKS": "4"}, r"SLURM_PROCID='4' and SLURM_NTASKS='4'"),
        ({"RANK": "1", "WORLD_SIZE": "x"}, r"WORLD_SIZE='x' is not an integer"),
        ({"RANK": "1.0", "WORLD_SIZE": "2"}, r"RANK='1.0' is not an integer"),
        # A half environment is refused even when another source would answer first.
        ({"RANK": "0", "WORLD_SIZE": "2", "SLURM_PROCID": "5"}, r"SLURM_PROCID='5' is set but SLURM_NTASKS"),
    ],
)
def test_a_half_or_inconsistent_environment_is_refused(
    clean: pytest.MonkeyPatch, ids: str, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        clean.setenv(name, value)
    with pytest.raises(ConfigError, match=rf"shard='auto': {message}"):
        resolve()
    with pytest.raises(ConfigError, match=message):
        Loader(ids, 10, shard="auto")


def _tf_config(kind: str, index: Any, chiefs: int = 1, workers: int = 2) -> str:
    cluster = {
        "chief": [f"127.0.0.1:{i}" for i in range(chiefs)],
        "worker": [f"127.0.0.1:{9 + i}" for i in range(workers)],
    }
    return json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (_tf_config("worker", 1.7), r"TF_CONFIG task index 1\.7 of type 'worker' must be an integer in \[0, 2\)"),
        (_tf_config("worker", 1.0), r"task index 1\.0 of type 'worker' must be an integer"),
        (_tf_config("worker", "1"), r"task index '1' of type 'worker'"),
        (_tf_config("worker", True), r"task index True"),
        (
            _tf_config("worker", 2),
            r"task index 2 of type 'worker' must be an integer in \[0, 2\) \(the cluster lists 2 workers\)",
        ),
        (_tf_config("worker", -1), r"task index -1"),
        (
            _tf_config("chief", 1),
            r"task index 1 of type 'chief' must be an integer in \[0, 1\) \(the cluster lists 1 chief\)",
        ),
        (_tf_config("worker", 0, workers=0), r"task index 0 of type 'worker' must be an integer in \[0, 0\)"),
        ("{not json", "TF_CONFIG is not valid"),
        (
            json.dumps({"cluster": {"ps": ["a"]}, "task": {"type": "ps", "index": 0}}),
            "task type 'ps' does not read input",
        ),
    ],
)
def test_tf_config_task_index_must_be_an_integer_in_range(clean: pytest.MonkeyPatch, config: str, message: str) -> None:
    clean.setenv("TF_CONFIG", config)
    with pytest.raises(ConfigError, match=message):
        resolve()


def test_tf_config_in_range(clean: pytest.MonkeyPatch) -> None:
    clean.setenv("TF_CONFIG", _tf_config("chief", 0))
    assert resolve() == (0, 3, "TF_CONFIG")
    clean.setenv("TF_CONFIG", _tf_config("worker", 1))
    assert resolve() == (2, 3, "TF_CONFIG")
    clean.setenv("TF_CONFIG", _tf_config("worker", 3, chiefs=0, workers=4))
    assert resolve() == (3, 4, "TF_CONFIG")
    with pytest.raises(ConfigError, match="shard must be 'auto'"):
        Shard.of("automatic")


def test_auto_never_imports_a_framework(ids: str) -> None:
    code = (
        "import sys, npyfeed\n"
        f"loader = npyfeed.Loader({ids!r}, 10, shard='auto')\n"
        "print(loader.shard, sorted(m for m in ('torch', 'tensorflow', 'jax', 'ray', 'keras') if m in sys.modules))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "RANK": "2"}
    env["WORLD_SIZE"] = "3"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "Shard(index=2, count=3, source='RANK/WORLD_SIZE') []"
