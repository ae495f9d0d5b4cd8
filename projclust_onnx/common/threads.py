"""Thread counts that hold up on a shared machine.

os.cpu_count() reports the host's cores; a container, a CI runner or a taskset sees
fewer (CPU affinity, cgroup CPU quota). Oversubscribed threads wait on each other at
every parallel region, and small dense algebra (a 384 x 384 eigh) is all regions:
beside one busy process it ran 20x slower on two threads than on one. So: as many
threads as CPUs are actually available for big products, one for small algebra.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def _cgroup_quota() -> float | None:
    """CPUs granted by the cgroup (v2 cpu.max, else v1 cfs quota), None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run torch's CPU kernels on `count` threads inside the block."""
    import torch

    previous = torch.get_num_threads()
    if count == previous:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def session_options(threads: int = 0, spinning: bool = False):
    """onnxruntime SessionOptions with intra-op threads from the available CPUs.

    Spinning threads burn the CPU they wait on; off by default (short checks), the
    benchmark turns it on to measure what a server would see.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or available_cpus()
    options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options
