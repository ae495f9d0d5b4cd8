"""The command line: a thin shell over the Python API (parse, call, print).

`main` holds `projclust-onnx`'s subcommands; `optimum` registers the same ones
under `optimum-cli projclust`. Nothing here imports torch at start-up.

`entry` is the program itself (the `projclust-onnx` script, `python -m projclust_onnx.cli`):
a SIGINT or SIGTERM at any moment, imports and interpreter exit included, ends it with one
line and 130 or 143, never a traceback or a silent death.
"""

import os
import signal
import sys

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _leave(outcome: str):
    """A handler that says `outcome` in one line and exits as a shell expects, running nothing more."""
    def handler(signum, frame):
        os.write(2, f"projclust-onnx: interrupted; {outcome}\n".encode())
        os._exit(128 + signum)

    return handler


def entry() -> int:
    """Run `projclust-onnx` with the process's signals covered from its first import to its exit."""
    for signum in _SIGNALS:
        signal.signal(signum, _leave("nothing was written"))
    from projclust_onnx.cli.main import main

    signal.signal(signal.SIGINT, signal.default_int_handler)  # main() turns Ctrl-C into its one line
    code = main()
    # Whatever the run left is in place now; the interpreter's teardown (torch, ONNX Runtime) is all that
    # remains, and a signal there must not pass for a failure without saying so.
    for signum in _SIGNALS:
        signal.signal(signum, _leave(f"the run had finished (exit code {code}) and its output is as it said"))
    with_flush = [stream for stream in (sys.stdout, sys.stderr) if stream is not None]
    for stream in with_flush:
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    return code
