"""Memory left to this process, from cgroup v1 and v2 trees laid out like the kernel's (and the real one here).

cgroup v2 with a memory limit cannot be made on this machine: the hierarchy is hybrid, the memory controller is
bound to v1, and ``echo +memory > /sys/fs/cgroup/unified/cgroup.subtree_control`` fails (ENOENT). So v2 is tested
on a tree of the files the kernel would show, found through a ``mountinfo`` like a v2-only container's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from npyfeed.loader.budget import budget_bytes, plan
from npyfeed.system import available_memory, cgroup_memory

MiB = 1 << 20


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fake_proc(tmp: Path, cgroup: str, mounts: list[str], meminfo_mib: int = 16384) -> Path:
    proc = tmp / "proc"
    write(proc / "self" / "cgroup", cgroup)
    write(proc / "self" / "mountinfo", "".join(m + "\n" for m in mounts))
    write(proc / "meminfo", f"MemTotal: 33554432 kB\nMemAvailable: {meminfo_mib * 1024} kB\n")
    return proc


def test_cgroup_v2_limit_minus_what_cannot_be_reclaimed(tmp_path: Path) -> None:
    root = tmp_path / "cg2"
    pod = root / "kubepods" / "pod1"
    write(root / "kubepods" / "memory.max", f"{1024 * MiB}\n")
    write(root / "kubepods" / "memory.current", f"{300 * MiB}\n")
    write(root / "kubepods" / "memory.stat", f"anon {200 * MiB}\nactive_file {50 * MiB}\ninactive_file {50 * MiB}\n")
    write(pod / "memory.max", f"{256 * MiB}\n")
    write(pod / "memory.current", f"{200 * MiB}\n")
    write(
        pod / "memory.stat", f"anon {60 * MiB}\nfile {140 * MiB}\nactive_file {40 * MiB}\ninactive_file {100 * MiB}\n"
    )
    proc = fake_proc(tmp_path, "0::/kubepods/pod1\n", [f"30 25 0:26 / {root} rw,nosuid - cgroup2 cgroup2 rw"])
    levels = cgroup_memory(proc)
    assert [(lv.version, lv.limit) for lv in levels] == [(2, 256 * MiB), (2, 1024 * MiB)]
    assert levels[0].room == 256 * MiB - 60 * MiB  # page cache does not count: the kernel reclaims it
    assert available_memory(proc) == 196 * MiB


def test_cgroup_v2_max_means_no_limit(tmp_path: Path) -> None:
    root = tmp_path / "cg2"
    write(root / "job" / "memory.max", "max\n")
    write(root / "job" / "memory.current", f"{10 * MiB}\n")
    proc = fake_proc(tmp_path, "0::/job\n", [f"30 25 0:26 / {root} rw - cgroup2 cgroup2 rw"], meminfo_mib=4096)
    assert cgroup_memory(proc) == []
    assert available_memory(proc) == 4096 * MiB


def test_cgroup_v1_in_a_hybrid_hierarchy_with_a_namespaced_mount(tmp_path: Path) -> None:
    v1, v2 = tmp_path / "memory", tmp_path / "unified"
    group = v1 / "job"  # the container sees its own group as the mount root: /proc/self/cgroup says /docker/abc
    write(group / "memory.limit_in_bytes", f"{512 * MiB}\n")
    write(group / "memory.usage_in_bytes", f"{400 * MiB}\n")
    write(group / "memory.stat", f"cache {300 * MiB}\nrss {100 * MiB}\ntotal_active_file {120 * MiB}\n"
                                 f"total_inactive_file {180 * MiB}\n")  # fmt: skip
    write(v2 / "cgroup.controllers", "hugetlb\n")
    proc = fake_proc(
        tmp_path,
        "9:name=systemd:/\n4:memory:/docker/abc/job\n0::/\n",
        [
            f"40 30 0:40 /docker/abc {v1} rw - cgroup cgroup rw,memory",
            f"41 30 0:41 / {v2} rw - cgroup2 cgroup2 rw",
            "42 30 0:42 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu",
        ],
    )
    levels = cgroup_memory(proc)
    assert [(lv.version, lv.limit, lv.room) for lv in levels] == [(1, 512 * MiB, 412 * MiB)]
    assert available_memory(proc) == 412 * MiB


def test_this_process_sees_the_machine_or_its_container() -> None:
    room = available_memory()
    assert 0 < room < 1 << 50
    assert budget_bytes(room) <= 256 * MiB


@pytest.mark.parametrize("row_bytes", [1, 8, 128, 4096, 1 << 20])
@pytest.mark.parametrize("random", [False, True])
def test_a_plan_stays_within_its_budget(row_bytes: int, random: bool) -> None:
    budget = 48 * MiB
    batch = max(1, (1 << 20) // row_bytes)
    p = plan(batch_size=batch, row_bytes=[row_bytes], file_bytes=[64 << 30], random=random, num_threads=2,
             io_threads=8, read_bytes=4 << 20, budget=budget)  # fmt: skip
    read_out = p.batches_per_read * batch * row_bytes
    assert p.buffers * read_out <= budget // 2 + 2 * read_out  # a read never shrinks below one batch
    page_row = row_bytes + 4095 if random else row_bytes
    assert 2 * min(p.max_depth, 8) * p.window_rows * page_row <= budget // 4 + 2 * 8 * 16 * page_row
    # Pages one read touches stay near 4 MiB, so a random read of tiny rows is not 64 batches of page faults.
    assert p.batches_per_read == 1 or p.batches_per_read * batch * page_row <= 4 << 20
    if random:
        assert p.trim_rows > 0  # a 64 GiB mapping's page tables (128 MiB) would not fit: they are dropped
