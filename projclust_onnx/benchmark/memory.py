"""Peak memory of one model, measured in a process of its own (run by runner.measure_memory)."""

from __future__ import annotations


def _rss_peak_mb() -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(onnx_path: str, providers: list[str], batch: int, seq: int, n_rows: int) -> dict:
    """CPU: growth of peak RSS over the baseline for creating the session and one run.
    CUDA: device memory in use after the run (nvidia-ml-py when installed)."""
    import numpy as np
    import onnxruntime as ort

    from projclust_onnx.pipeline.parity import random_feeds

    baseline = _rss_peak_mb()
    session = ort.InferenceSession(onnx_path, providers=providers)
    feeds = random_feeds(session.get_inputs(), "input_ids", n_rows, batch, seq, np.random.default_rng(0))
    session.run(None, feeds)
    if providers[0] == "CUDAExecutionProvider":
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            used = pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
            return {"kind": "cuda_device", "peak_mb": used}
        except Exception as err:  # nvidia-ml-py missing or no NVML: say so, do not guess
            return {"kind": "cuda_device", "error": f"nvidia-ml-py unavailable: {err}"}
    return {"kind": "cpu_rss", "peak_mb": _rss_peak_mb() - baseline}
