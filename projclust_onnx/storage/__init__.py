"""How a table's values are stored: float, per-tensor int8, block-quantized codes.

Imports only `common`.
"""
