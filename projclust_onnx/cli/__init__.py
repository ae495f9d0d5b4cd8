"""The command line: a thin shell over the Python API (parse, call, print).

`main` holds `projclust-onnx`'s subcommands; `optimum` registers the same ones
under `optimum-cli projclust`. Nothing here imports torch at start-up.
"""
