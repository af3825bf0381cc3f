"""Real multi-process runs on 127.0.0.1: each engine's workers read disjoint shares that cover one epoch.

Every test starts its own processes on free loopback ports and bounds them in time. The worker scripts live in
``tests/engines/``; each writes what it trained on to a JSON file the test checks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ENGINES = Path(__file__).resolve().parent / "engines"
SRC = str(Path(__file__).resolve().parents[1] / "src")
N = 1000

pytestmark = pytest.mark.slow


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "RANK", "WORLD_SIZE", "SLURM_PROCID")}
    env.update(PYTHONPATH=SRC, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore", **extra)
    return env


def run_all(commands: list[list[str]], envs: list[dict[str, str]], timeout: float) -> None:
    """Start every command, wait for all (killing all on a timeout or a failure), fail with their output."""
    procs = [
        subprocess.Popen(c, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for c, e in zip(commands, envs, strict=True)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("workers timed out:\n" + "\n".join((p.communicate()[0] or "")[-3000:] for p in procs))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-5000:]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    rng = np.random.default_rng(0)
    np.save(d / "x.npy", rng.random((N, 4), dtype=np.float32))
    np.save(d / "y.npy", np.arange(N, dtype=np.int64))
    return d


def check_shares(results: list[dict[str, Any]], expected_rows: int = N) -> None:
    """Equal steps, disjoint rows, and together one epoch."""
    assert len({r["steps"] for r in results}) == 1, [r["steps"] for r in results]
    ids = [np.array(r["ids"]) for r in results]
    union = np.concatenate(ids)
    assert np.unique(union).size == union.size, "a row was read by two workers"
    assert union.size == expected_rows
    assert all(i.size for i in ids)


def test_torchrun_ddp(data: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    (port,) = free_ports(1)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(port),
        str(ENGINES / "torch_ddp.py"), str(data), str(tmp_path),
    ]  # fmt: skip
    run_all([command], [environment(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")], timeout=240)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    check_shares(results)
    assert [r["shard"] for r in results] == [[0, 2, "torch.distributed"], [1, 2, "torch.distributed"]]
    assert all(r["same_weights"] for r in results)


def test_tf_multi_worker_mirrored_strategy(data: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    envs = [
        environment(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        for i in range(2)
    ]
    command = [sys.executable, str(ENGINES / "tf_mwms.py"), str(data), str(tmp_path)]
    run_all([command, command], envs, timeout=300)
    results = [json.loads((tmp_path / f"worker{i}.json").read_text()) for i in range(2)]
    check_shares(results)
    assert [r["auto"] for r in results] == [[0, 2, "TF_CONFIG"], [1, 2, "TF_CONFIG"]]
    assert results[0]["w"] == results[1]["w"] and any(results[0]["w"])  # synchronous, all-reduced updates


def test_tf_mirrored_strategy_model_fit(data: Path) -> None:
    pytest.importorskip("tensorflow")
    out = subprocess.run(
        [sys.executable, str(ENGINES / "tf_mirrored.py"), str(data)],
        env=environment(KERAS_BACKEND="tensorflow"),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-5000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["steps"] == 2 * result["batches"] == 2 * 32  # ceil(1000 / 32) batches per epoch
    assert all(np.isfinite(result["loss"]))


def test_jax_distributed_global_arrays(data: Path, tmp_path: Path) -> None:
    pytest.importorskip("jax")
    (port,) = free_ports(1)
    commands = [
        [sys.executable, str(ENGINES / "jax_processes.py"), str(port), str(i), str(tmp_path), str(data)]
        for i in range(2)
    ]
    env = environment(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    run_all(commands, [env, env], timeout=240)
    results = [json.loads((tmp_path / f"process{i}.json").read_text()) for i in range(2)]
    check_shares(results, expected_rows=N // 32 * 32)  # drop_remainder: 31 global batches of 2 x 16 rows
    assert [r["shard"] for r in results] == [[0, 2, "jax.distributed"], [1, 2, "jax.distributed"]]
    assert [r["shapes"] for r in results] == [[[32, 4]], [[32, 4]]]  # one global batch of both processes' rows
    # The jitted step saw both processes' rows: the global sums add up to every row id read.
    assert results[0]["sums"] == results[1]["sums"]
    assert sum(results[0]["sums"]) == sum(results[0]["ids"]) + sum(results[1]["ids"])
    assert results[0]["w"] == results[1]["w"]


def test_keras_loader_checkpoint_survives_sigkill(tmp_path: Path) -> None:
    pytest.importorskip("keras")
    pytest.importorskip("torch")
    rows = 300
    d = tmp_path / "data"
    d.mkdir()
    np.save(d / "x.npy", np.random.default_rng(0).random((rows, 4), dtype=np.float32))
    np.save(d / "y.npy", np.arange(rows, dtype=np.float32))  # row ids as the target
    log, ckpt = tmp_path / "log.jsonl", tmp_path / "ckpt"
    command = [sys.executable, str(ENGINES / "keras_fit.py"), str(d), str(ckpt), str(log)]
    env = environment(KERAS_BACKEND="torch", OMP_NUM_THREADS="1")
    output = tmp_path / "first.out"
    with open(output, "w") as out:
        first = subprocess.Popen([*command, "0.05"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not (log.exists() and len(log.read_text().splitlines()) >= 17):  # past the checkpoint at batch 15
            assert first.poll() is None and time.monotonic() < deadline, output.read_text()[-5000:]
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
    index = json.loads((ckpt / "checkpoint.json").read_text())
    epoch, batch = index["keras"]["epoch"], index["keras"]["batch"]
    assert epoch == 0 and 15 <= batch < 30, index["keras"]  # mid-epoch (an epoch is 30 batches)
    before = [json.loads(line)["ids"] for line in log.read_text().splitlines()]
    assert len(before) > batch  # batches trained after the checkpoint were lost with the process
    log.unlink()
    second = subprocess.run([*command, "0"], env=env, capture_output=True, text=True, timeout=180)
    assert second.returncode == 0 and "done" in second.stdout, second.stderr[-5000:]
    after = [json.loads(line)["ids"] for line in log.read_text().splitlines()]
    assert len(after) == (30 - batch) + 30  # the rest of epoch 0, then epoch 1 whole
    epoch0 = sorted(i for ids in before[:batch] + after[: 30 - batch] for i in ids)
    assert epoch0 == list(range(rows))  # rows seen up to the checkpoint + after the restart = one epoch
    assert sorted(i for ids in after[30 - batch :] for i in ids) == list(range(rows))


def test_ray_train_torch_trainer_restores_the_loader_state(tmp_path: Path) -> None:
    pytest.importorskip("ray.train")
    rows = 200
    d = tmp_path / "data"
    d.mkdir()
    np.save(d / "x.npy", np.zeros((rows, 4), dtype=np.float32))
    np.save(d / "y.npy", np.arange(rows, dtype=np.int64))
    env = environment(RAY_DISABLE_USAGE_STATS="1", RAY_ADDRESS="", OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, str(ENGINES / "ray_train.py"), str(d), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, (out.stdout + out.stderr)[-5000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["error"] is None
    read = {}
    for attempt in ("first", "resumed"):
        read[attempt] = [
            [json.loads(line) for line in (tmp_path / f"{attempt}-rank{r}.jsonl").read_text().splitlines()]
            for r in range(2)
        ]
    # The first attempt failed right after its checkpoint at step 5 (of 10); the restart continued after it.
    assert [len(b) for b in read["first"]] == [5, 5]
    assert [len(b) for b in read["resumed"]] == [5, 5]
    seen = [i for r in range(2) for attempt in ("first", "resumed") for b in read[attempt][r] for i in b]
    assert sorted(seen) == list(range(rows))  # 200 rows = 2 x 10 steps x 10 rows: one epoch, each row once
