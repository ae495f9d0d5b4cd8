"""Thread counts from the CPUs actually available."""

from __future__ import annotations

import subprocess
import sys

import torch

from projclust_onnx.common.threads import available_cpus, session_options, torch_threads


def test_affinity_limits_the_count():
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from projclust_onnx.common.threads import available_cpus; print(available_cpus())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "1", done.stderr


def test_count_is_positive_and_bounded():
    import os

    assert 1 <= available_cpus() <= (os.cpu_count() or 1)


def test_torch_threads_restores():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_session_options_use_available_cpus():
    options = session_options()
    assert options.intra_op_num_threads == available_cpus()
    assert session_options(threads=3).intra_op_num_threads == 3
