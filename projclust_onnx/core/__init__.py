"""The fitting core: the projective-clustering estimator, factorizations, the byte budget,
the chooser over storages, and calibration weights.

Imports `storage` and `common` only; knows nothing of ONNX graphs.
"""
