"""From a model directory to a compressed one: config -> plan -> fit per table -> rewrite per file
-> check -> atomic save -> report.

Uses `core` for the fits and `projclust_onnx.passes` for the rewrites; nothing below imports it.
"""
