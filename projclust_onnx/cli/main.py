"""Make the word embedding of an ONNX transformer smaller by projective clustering, checked under ONNX Runtime.

Subcommands: compress, inspect, finetune, benchmark; each is a few lines over the
Python API. The same argument definitions and run functions serve
`optimum-cli projclust ...` (see optimum.py). Imports stay inside the run
functions so that `--help` and optimum-cli start fast.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import NoReturn

from projclust_onnx.common.progress import show

PROG = "projclust-onnx"
DEFAULT_OUTPUT = "projclust-output"


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but a usage error is one line and exit code 2, without the usage (--help has it)."""

    def error(self, message: str) -> NoReturn:
        usage_error(PROG, self.prog, message)


def usage_error(prog: str, command: str, message: str) -> NoReturn:
    """Print `prog: error: message` as one line, pointing at `command --help`, and exit with code 2."""
    print(f"{prog}: error: {' '.join(message.split())} (see {command} --help)", file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------------- arguments
# A flag that sets a ProjClustConfig setting has that setting's name as its dest (--clusters: n_clusters,
# --runtime: layout): _config passes the config every such dest the subcommand's parser has.
def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", default=None,
                        help="ONNX model directory or file, Hugging Face model directory, or hub id "
                             "(default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--file-name", default=None,
                        help="compress only this .onnx file of the directory (default: every .onnx file that "
                             "reads the word table)")
    from projclust_onnx.pipeline.tasks import EXPORT_TASKS

    parser.add_argument("--task", default="feature-extraction", choices=list(EXPORT_TASKS),
                        help="export task when --model is a Hugging Face model (default: feature-extraction)")
    parser.add_argument("--ids-input", default="input_ids",
                        help="name of the token-id graph input (default: input_ids)")


def add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--compression", type=float, default=None,
                        help="fraction of the table's bytes to remove, in (0, 1) (default: 0.4)")
    budget.add_argument("--rank", type=int, default=None, help="subspace dimension j, instead of --compression")
    from projclust_onnx.storage import registry  # numpy only: --help stays fast

    default = registry.default_method()
    parser.add_argument("--clusters", "-k", dest="n_clusters", metavar="CLUSTERS", type=int, default=None,
                        help=f"number of clusters k (default: 5 for {default}, 1 for the other methods)")
    parser.add_argument("--method", choices=list(registry.methods()), default=default,
                        help=f"{registry.methods_help()} (default: {default})")
    QUANTIZE = registry.QUANTIZE

    parser.add_argument("--quantize", choices=list(QUANTIZE), default=None,
                        help="store U in 8 or 4 bits per value (blocks with float16 scales; V in float16); "
                             "the budget then buys a larger rank (default: as the input table is stored, "
                             "none for a float table)")
    parser.add_argument("--block-size", type=int, default=32,
                        help="values per quantization block, a power of two >= 16 (default: 32)")
    parser.add_argument("--lookup-form", choices=["contrib", "standard"], default="contrib",
                        help="how quantized storage is read: contrib (GatherBlockQuantized, ONNX Runtime) or "
                             "standard (opset-13 operators only) (default: contrib)")
    parser.add_argument("--head", choices=["factorize", "keep"], default="factorize",
                        help="a tied LM head (MatMul/Gemm with the table's transpose, or its own transposed copy): "
                             "factorize rewrites it with the same factors, so the model stays tied and the head "
                             "costs n*j + k*j*d instead of n*d per position (with --quantize, through "
                             "MatMulNBits); keep leaves its copy dense and compresses the lookup only, untying the "
                             "model "
                             "(default: factorize)")
    parser.add_argument("--max-initializer-bytes", type=int, default=None, metavar="BYTES",
                        help="split every initializer larger than BYTES into row blocks after the rewrite, e.g. "
                             "268435456 for WebGPU's 256 MiB buffers (default: no limit)")
    parser.add_argument("--check-lengths", dest="check_lengths", type=int, nargs="+", default=None, metavar="N",
                        help="sequence lengths the numeric check runs at, for a model that accepts only some "
                             "(windowed attention: multiples of the window) (default: 1, 17 and 64, within the "
                             "model's positions)")
    parser.add_argument("--target-ratio", type=float, default=None, metavar="R",
                        help="choose the method, k, j and bits (plain quantization, codebooks, SVD, projective "
                             "clustering) with the lowest calibration-weighted error in table bytes / R; overrides "
                             "--compression, --method, --clusters and --quantize; with --method codebook, only "
                             "codebooks are tried (default: off)")


def add_compress_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_output_arguments(parser)
    add_budget_arguments(parser)
    add_clustering_arguments(parser)


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", "-o", default=DEFAULT_OUTPUT,
                        help=f"output model directory (default: ./{DEFAULT_OUTPUT})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output model directory (never a directory that holds no model)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress messages or bars")


def add_clustering_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runtime", "--layout", dest="layout", choices=["grouped", "onehot"], default="grouped",
                        help="runtime layout of the k-branch subgraph (default: grouped, fastest on CPU)")
    parser.add_argument("--device", default="auto", help="where clustering runs: auto, cpu or cuda (default: auto)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--calibration-text", nargs="+", default=[], metavar="FILE",
                        help="text files whose token frequencies weight the clustering")
    parser.add_argument("--calibration-dataset", default=None, metavar="NAME[:CONFIG][@SPLIT]|FILE",
                        help="a dataset (hub name or local CSV/JSON) whose texts weight the clustering")
    parser.add_argument("--calibration-column", default="text",
                        help="text column of --calibration-dataset (default: text)")
    parser.add_argument("--calibration-smoothing", type=float, default=1.0,
                        help="pseudo-count added to every token's frequency (default: 1.0)")
    parser.add_argument("--special-token-weight", type=float, default=30.0,
                        help="weight of each special token ([CLS], [SEP], ...) as a multiple of the rest of the "
                             "table, so they are fit (nearly) exactly; 0 turns it off (default: 30)")
    from projclust_onnx.pipeline.config import PRIORS  # numpy and the registry only: --help stays fast

    parser.add_argument("--calibration-prior", choices=list(PRIORS), default=None,
                        help="row weights where no calibration text is given, blended into a given text's counts: "
                             "wordfreq (broad word frequencies in the languages the tokenizer covers) or none "
                             "(default: wordfreq)")
    parser.add_argument("--n-init", type=int, default=10, help="clustering seeds tried (default: 10)")


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", default=None,
                        help="Hugging Face model directory or hub id (default: the bundled all-MiniLM-L6-v2)")
    add_output_arguments(parser)
    add_budget_arguments(parser)
    add_clustering_arguments(parser)
    data = parser.add_argument_group("training data")
    data.add_argument("--glue-task", default=None, help="train on a GLUE task (datasets.load_dataset('glue', task))")
    data.add_argument("--data-files", nargs="+", default=None, help="local CSV/JSON training files")
    data.add_argument("--eval-files", nargs="+", default=None, help="local CSV/JSON files to report accuracy on")
    data.add_argument("--text-column", nargs="+", default=None, help="one or two text columns")
    data.add_argument("--label-column", default="label", help="label column (default: label)")
    data.add_argument("--max-samples", type=int, default=None,
                      help="use at most this many training examples (default: all)")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=float, default=1.0, help="epochs, fractions allowed (default: 1)")
    train.add_argument("--batch-size", type=int, default=32, help="examples per step (default: 32)")
    train.add_argument("--learning-rate", type=float, default=5e-5, help="AdamW peak learning rate (default: 5e-5)")
    train.add_argument("--max-length", type=int, default=128, help="tokens per example, truncated (default: 128)")


def add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_budget_arguments(parser)


def add_benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    from projclust_onnx.benchmark.cli_args import add_arguments

    add_arguments(parser)


# ---------------------------------------------------------------------- run functions
def _model_source(args: argparse.Namespace) -> str:
    if args.model:
        return args.model
    from projclust_onnx.pipeline.bundled import BUNDLED_MODEL_NAME, bundled_model_path

    path = bundled_model_path()
    print(f"No --model given: using {BUNDLED_MODEL_NAME} at {path}", file=sys.stderr)
    return str(path)


def _config(args: argparse.Namespace):
    """The ProjClustConfig the settings flags give: a flag left unset (None) leaves the config's default
    (--compression: 0.4)."""
    from projclust_onnx.pipeline.config import SECTION_OF, ProjClustConfig

    return ProjClustConfig(**{name: value for name, value in vars(args).items()
                              if name in SECTION_OF and value is not None})


def run_compress(args: argparse.Namespace) -> int:
    from pathlib import Path

    from projclust_onnx.pipeline.output_dir import check_output_dir, clean_leftovers

    clean_leftovers(Path(args.output))  # first: a run refused below still removes a dead run's stage
    from projclust_onnx.pipeline.compressor import ProjClustCompressor

    config = _config(args)
    if args.model:  # before an export of a Hugging Face folder: the output must not overlap it
        check_output_dir(Path(args.output), args.overwrite, [Path(args.model).expanduser()])
    compressor = ProjClustCompressor.from_pretrained(_model_source(args), file_name=args.file_name, task=args.task,
                                                     verbose=not args.quiet)
    report = compressor.compress(args.output, config, overwrite=args.overwrite, verbose=not args.quiet)
    show(format_table(args.title, report.summary_rows()))
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from projclust_onnx.pipeline.compressor import ProjClustCompressor

    config = _config(args)  # settings first: before an export of a Hugging Face model
    compressor = ProjClustCompressor.from_pretrained(_model_source(args), file_name=args.file_name, task=args.task,
                                                     verbose=False)
    show(format_table(args.title, compressor.inspect(config).rows))
    return 0


def run_benchmark(args: argparse.Namespace) -> int:
    from projclust_onnx.benchmark.runner import run_from_args

    return run_from_args(args)


def run_finetune(args: argparse.Namespace) -> int:
    from projclust_onnx.common.data import class_ids, labeled_texts, load_records
    from projclust_onnx.common.metrics import glue_task
    from projclust_onnx.nn.finetune import check_finetune_config, finetune, num_labels_of, training_settings

    training_settings(args.epochs, args.batch_size, args.learning_rate, args.max_length)  # before loading data
    check_finetune_config(_config(args))
    metrics: tuple[str, ...] = ("accuracy",)
    if args.glue_task:
        columns, metrics, n_labels = glue_task(args.glue_task)
        train = load_records(f"glue:{args.glue_task}@train")
        evaluation = load_records(f"glue:{args.glue_task}@validation")
    elif args.data_files:
        if not args.text_column:
            raise CLIError("--data-files needs --text-column (one or two column names)")
        columns, n_labels = args.text_column, None
        train = load_records(args.data_files)
        evaluation = load_records(args.eval_files) if args.eval_files else None
    else:
        raise CLIError("give training data: --glue-task TASK or --data-files FILE... --text-column COL")
    texts, labels = labeled_texts(train, list(columns), args.label_column)
    if args.max_samples:
        texts, labels = texts[:args.max_samples], labels[:args.max_samples]
    eval_texts, eval_labels = labeled_texts(evaluation, list(columns), args.label_column) if evaluation else (None,
                                                                                                            None)
    labels, eval_labels, names = class_ids(labels, eval_labels)
    if names is not None:
        print(f"{PROG}: text labels taken as classes in sorted order: " +
              ", ".join(f"{i} = {name}" for i, name in enumerate(names[:10])) + (" ..." if len(names) > 10 else ""),
              file=sys.stderr)
    report = finetune(_model_source(args), args.output, texts, labels, _config(args),
                      num_labels=n_labels or num_labels_of(labels), epochs=args.epochs, batch_size=args.batch_size,
                      learning_rate=args.learning_rate, max_length=args.max_length, eval_texts=eval_texts,
                      eval_labels=eval_labels, metrics=metrics, overwrite=args.overwrite, verbose=not args.quiet)
    rows = [("output", args.output), ("training", f"{report.epochs:.2f} epochs, {report.steps} steps, "
                                                  f"{report.train_seconds:.0f}s, final loss {report.final_loss:.4f}")]
    if report.eval_metrics:
        rows.append(("evaluation", ", ".join(f"{k} {v:.4f}" for k, v in report.eval_metrics.items())))
    c = report.compression
    rows += [("compression", f"{c['method']}, k={c['n_clusters']}, j={c['rank']}: "
                             f"{c['embedding_compression']:.1%} fewer embedding parameters"),
             ("parity (max abs diff)", f"{c['parity_max_abs_diff']:.2e} <= {c['parity_tolerance']:g}")]
    show(format_table(args.title, rows))
    return 0


def format_table(title: str, rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 2 + max(len(v) for _, v in rows))
    return "\n".join([title, line, *(f"{k:<{width}}  {v}" for k, v in rows), line])


# ---------------------------------------------------------------------- entry point
COMMANDS = {
    "compress": ("compress the word embedding of a model", add_compress_arguments, run_compress),
    "inspect": ("show the word embedding the pass finds and the budget arithmetic", add_inspect_arguments,
                run_inspect),
    "finetune": ("compress a classifier's embedding, fine-tune it, and export it compressed", add_finetune_arguments,
                 run_finetune),
    "benchmark": ("compare an original model with compressed ones under ONNX Runtime", add_benchmark_arguments,
                  run_benchmark),
}


# Every subcommand's numeric flags, checked in one place before any work: dest -> smallest value allowed.
# (Settings of ProjClustConfig are checked by the config itself, naming their flags the same way.)
FLAG_MINIMUMS = {"batch_sizes": 1, "sequence_lengths": 1, "warmup": 0, "repeats": 1, "threads": 0,
                 "max_length": 1, "max_samples": 1, "batch_size": 1}


def check_flags(args: argparse.Namespace) -> None:
    """SettingError (naming the flag) for a flag value out of range, whichever subcommand has it."""
    from projclust_onnx.common import arguments as arg

    for dest, minimum in FLAG_MINIMUMS.items():
        value = getattr(args, dest, None)
        for item in value if isinstance(value, list) else [] if value is None else [value]:
            arg.whole(dest, item, minimum)
    if getattr(args, "split", None) is not None and not getattr(args, "glue_task", None):
        raise CLIError("--split picks a split of --glue-task's dataset; give --glue-task, or leave --split out "
                       "(--data-files are read whole)")


def run_guarded(func, args: argparse.Namespace, prog: str = PROG, title: str | None = None) -> int:
    """Run a subcommand; a user error becomes one line on stderr and exit code 2.

    `title` heads the printed table (the command as typed). SIGTERM ends the run like
    Ctrl-C: cleanup runs, nothing half-written is left behind, and the line says what is
    on disk (a signal held during the final move reports the new output in place).
    """
    try:
        from projclust_onnx.pipeline.output_dir import sigterm_as_interrupt

        args.title = title or prog
        check_flags(args)
        with sigterm_as_interrupt():
            return func(args)
    except KeyboardInterrupt as err:
        return interrupted(prog, err)
    except Exception as err:
        line = error_line(err)
        if line is None:
            raise
        print(f"{prog}: error: {line}", file=sys.stderr)
        return 2


_OUT_OF_MEMORY = ("free memory, raise the process's memory limit (ulimit -v), or give fewer clusters or a smaller "
                  "rank")


def error_line(err: Exception) -> str | None:
    """The one line a user error gets (None for a bug, which keeps its traceback)."""
    if isinstance(err, MemoryError):
        return f"out of memory; {_OUT_OF_MEMORY}"
    if isinstance(err, ImportError) and not isinstance(err, ModuleNotFoundError):  # a library that cannot map
        what = f" {err.name}" if err.name else " a library"
        return (f"cannot load{what} ({_one_line(err)[:160]}); under a memory limit (ulimit -v) torch and ONNX Runtime "
                "alone take about 1 GiB of address space: raise the limit, or reinstall the package if none is set")
    if isinstance(err, (ValueError, CLIError)):
        return _one_line(err)
    if isinstance(err, OSError):  # a read-only or full disk, a missing file: name the path, not a traceback
        return f"{err.strerror or err}{f': {err.filename}' if err.filename else ''}"
    if type(err).__name__ == "EncodeError" and type(err).__module__.startswith("google.protobuf"):
        # protobuf cannot say why; the cause seen is memory (a model serialized for the check under ulimit -v)
        return f"could not serialize the model ({_one_line(err)}), most likely out of memory; {_OUT_OF_MEMORY}"
    if isinstance(err, RuntimeError) and ("alloc" in str(err).lower() or "out of memory" in str(err).lower()):
        return f"out of memory ({_one_line(err)[:200]}); {_OUT_OF_MEMORY}"  # torch's failed allocation
    import onnx_ir as ir

    if isinstance(err, ir.passes.PreconditionError):
        return _one_line(err)
    if isinstance(err, ir.passes.PassError):
        cause = err.__cause__ or err
        while isinstance(cause, ir.passes.PassError) and cause.__cause__ is not None:
            cause = cause.__cause__
        return _one_line(cause)
    return None


def interrupted(prog: str, err: KeyboardInterrupt) -> int:
    """One line for Ctrl-C or SIGTERM, saying what is on disk; 130 or 143 as a shell expects."""
    outcome = getattr(err, "outcome", "no partial output was left behind")
    print(f"{prog}: interrupted; {outcome}", file=sys.stderr)
    return getattr(err, "exit_code", 130)


def _one_line(err: BaseException) -> str:
    from projclust_onnx.common.errors import SettingError

    text = err.for_cli() if isinstance(err, SettingError) else str(err)
    return " ".join(text.split())


def build_parser() -> argparse.ArgumentParser:
    from projclust_onnx import __version__

    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    for name, (help_text, add_args, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(func=run)
    return parser


# Where each subcommand writes when --output is not given: a refused command line still cleans up there.
DEFAULT_OUTPUTS = {"compress": DEFAULT_OUTPUT, "finetune": DEFAULT_OUTPUT, "benchmark": "benchmark-output"}


def output_named(argv: list[str]) -> str | None:
    """The output directory a command line names (--output/-o, or its subcommand's default), read without
    parsing it: for a line argparse refuses."""
    command = next((word for word in argv if not word.startswith("-")), None)
    found = DEFAULT_OUTPUTS.get(command)
    for i, word in enumerate(argv):
        if word in ("--output", "-o") and i + 1 < len(argv):
            found = argv[i + 1]
        elif word.startswith("--output="):
            found = word.split("=", 1)[1]
        elif word.startswith("-o") and len(word) > 2 and not word.startswith("--"):
            found = word[2:]
    return found


def clean_after_refusal(argv: list[str]) -> None:
    """A command line refused by argparse still removes a dead run's leftovers beside its output (as every
    run does first); nothing else."""
    output = output_named(argv)
    if output:
        from pathlib import Path

        from projclust_onnx.pipeline.output_dir import clean_leftovers

        with contextlib.suppress(Exception):
            clean_leftovers(Path(output))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    with contextlib.suppress(AttributeError, ValueError):  # a path in any script prints, whatever the locale
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        parser = build_parser()
        try:
            args, unknown = parser.parse_known_args(argv)
            if unknown:  # named against the subcommand's --help, where the flags it takes are listed
                usage_error(PROG, f"{PROG} {args.command}" if getattr(args, "command", None) else PROG,
                            f"unrecognized arguments: {' '.join(unknown)}")
        except SystemExit as done:
            if done.code == 2:
                clean_after_refusal(argv)
            raise
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return run_guarded(args.func, args, PROG, f"{PROG} {args.command}")
    except KeyboardInterrupt as err:  # imports and argument parsing included
        return interrupted(PROG, err)
    except Exception as err:  # an import under a memory limit, while the parser is built
        line = error_line(err)
        if line is None:
            raise
        print(f"{PROG}: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

