"""`python -m projclust_onnx.cli`: the same as the `projclust-onnx` command."""

import sys

from projclust_onnx.cli.main import main

sys.exit(main())
