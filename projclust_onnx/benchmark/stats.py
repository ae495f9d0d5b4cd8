"""Latency statistics from raw timings."""

from __future__ import annotations

import numpy as np


def latency_stats(seconds: list[float] | np.ndarray, batch_size: int) -> dict[str, float]:
    """p50/p90/p99/mean latency in milliseconds, their spread (min, interquartile range,
    standard deviation) and throughput in sequences per second.

    Percentiles use linear interpolation between order statistics (numpy's default);
    throughput is batch_size over the median latency, so one slow outlier does not move it.
    """
    t = np.asarray(seconds, dtype=np.float64)
    if t.size == 0:
        raise ValueError("no timings to summarise")
    if (t <= 0).any():
        raise ValueError("timings must be positive seconds")
    p25, p50, p75, p90, p99 = np.percentile(t, [25, 50, 75, 90, 99])
    return {"p50_ms": 1e3 * p50, "p90_ms": 1e3 * p90, "p99_ms": 1e3 * p99, "mean_ms": 1e3 * t.mean(),
            "min_ms": 1e3 * t.min(), "iqr_ms": 1e3 * (p75 - p25), "std_ms": 1e3 * t.std(),
            "throughput_seq_per_s": batch_size / p50, "runs": int(t.size)}
