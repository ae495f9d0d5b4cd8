"""`python -m projclust_onnx.cli`: the same as the `projclust-onnx` command."""

import sys

from projclust_onnx.cli import entry

sys.exit(entry())
