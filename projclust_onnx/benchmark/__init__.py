"""The benchmark harness: accuracy, latency, throughput, memory and size under ONNX Runtime.

`projclust-onnx benchmark` and the studies in benchmarks/ both run on it.
"""
