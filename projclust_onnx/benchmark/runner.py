"""Run an original model and compressed ones side by side under ONNX Runtime.

report.json schema (schema_version 2; 1 lacked threads, fidelity_source, rank and the spread)::

    {"schema_version": 2, "date": str, "machine": str, "provider": str,
     "grid": {"batch_sizes": [int], "sequence_lengths": [int], "warmup": int, "repeats": int, "threads": int},
     "data": {"source": str, "samples": int, "metrics": [str]} | null,
     "fidelity_source": str | null,
     "models": {NAME: {
         "directory": str, "file_bytes": int, "parameters": int, "embedding_parameters": int | null,
         "compression": {projclust_config.json fields, plus "rank"} | null,
         "latency": {"b{B}_s{S}": {"batch_size", "sequence_length", "p50_ms", "p90_ms", "p99_ms",
                                   "mean_ms", "min_ms", "iqr_ms", "std_ms", "throughput_seq_per_s", "runs"}},
         "latency_ratio": {"b{B}_s{S}": p50 / the original's p50},
         "memory": {"kind": "cpu_rss" | "cuda_device", "peak_mb": float, "grid_point": "b{B}_s{S}"} | null,
         "accuracy": {metric: float} | null,
         "fidelity_cosine": mean cosine of outputs against the original's | null}}}

Latency runs are interleaved (each repeat visits every model, in a rotating order)
so that drift on a shared machine hits all models alike.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from projclust_onnx.benchmark.stats import latency_stats
from projclust_onnx.common.errors import SettingError
from projclust_onnx.storage.registry import FLOAT_U

SCHEMA_VERSION = 2


@dataclass
class LabeledData:
    source: str
    texts: list[tuple[str, ...]]
    labels: list
    metrics: tuple[str, ...]


def resolve_providers(provider: str = "auto") -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if provider == "cuda" and not has_cuda:
        raise ValueError(f"--provider cuda asked for, but onnxruntime offers {available}; "
                         "install the gpu extra (onnxruntime-gpu) instead of onnxruntime")
    if provider == "cuda" or (provider == "auto" and has_cuda):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if provider not in ("auto", "cpu"):
        raise ValueError(f"provider={provider!r} must be auto, cpu or cuda")
    return ["CPUExecutionProvider"]


def open_session(onnx_path: Path, providers: list[str], threads: int = 0):
    """A session as a server would run it (spinning threads), on the CPUs actually available."""
    import onnxruntime as ort

    from projclust_onnx.common.threads import session_options

    try:
        return ort.InferenceSession(str(onnx_path), session_options(threads, spinning=True), providers=providers)
    except Exception as err:  # onnxruntime's InvalidProtobuf, Fail, NoSuchFile...: not ValueErrors
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f"ONNX Runtime cannot load {onnx_path} ({type(err).__name__}: {reason}); the file may be "
                         "truncated or not an ONNX model: re-export it") from err


def grid_key(batch: int, seq: int) -> str:
    return f"b{batch}_s{seq}"


def model_sizes(directory: Path, onnx_path: Path, embedding: int | None = None) -> dict:
    """File bytes, all parameters, and embedding parameters (given, from projclust_report.json when
    compressed, else found in the graph)."""
    import onnx

    from projclust_onnx.pipeline.model_files import model_bytes

    proto = onnx.load(str(onnx_path), load_external_data=False)
    params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    report_path = directory / "projclust_report.json"
    compression = None
    if embedding is None and report_path.is_file():
        embedding = json.loads(report_path.read_text())["embedding_params_after"]
    config_path = directory / "projclust_config.json"
    if config_path.is_file():
        from projclust_onnx.pipeline.config import ProjClustConfig

        compression = ProjClustConfig.from_pretrained(config_path).to_dict(flat=True)  # its one-line summary's keys
        if report_path.is_file():
            written = json.loads(report_path.read_text())
            compression["rank"] = written.get("rank")
            compression["chosen"] = (written.get("choice") or {}).get("chosen", {}).get("label")
            compression["storage"] = written.get("quantize")
    if embedding is None:
        from projclust_onnx.passes import search_word_embedding
        from projclust_onnx.pipeline.model_files import load_model

        matches = search_word_embedding(load_model(onnx_path).graph).matches
        embedding = int(np.prod(matches[0].shape)) if len(matches) == 1 else None
    return {"file_bytes": model_bytes(onnx_path), "parameters": params, "embedding_parameters": embedding,
            "compression": compression}


def measure_latency(sessions: dict, grid: list[tuple[int, int]], n_rows: int, warmup: int, repeats: int,
                    use_iobinding: bool, progress: bool = False) -> dict[str, dict[str, dict]]:
    """Per model and grid point, latency statistics of interleaved runs on identical inputs."""
    from projclust_onnx.pipeline.parity import random_feeds

    names = list(sessions)
    results: dict[str, dict[str, dict]] = {name: {} for name in names}
    bar = None
    if progress:
        from projclust_onnx.common.progress import new_bar

        bar = new_bar(total=len(grid) * repeats * len(names), desc="latency", unit="run")
    from projclust_onnx.benchmark.decoder import is_decoder, step_feeds

    for batch, seq in grid:
        # A decoder's sequence length is its cache: one decode step after `seq` cached positions.
        feeds = {name: step_feeds(s, n_rows, batch, seq, np.random.default_rng(0)) if is_decoder(s) else
                 random_feeds(s.get_inputs(), "input_ids", n_rows, batch, seq, np.random.default_rng(0))
                 for name, s in sessions.items()}
        runners = {name: _runner(sessions[name], feeds[name], use_iobinding) for name in names}
        for name in names:
            for _ in range(warmup):
                runners[name]()
        timings: dict[str, list[float]] = {name: [] for name in names}
        for r in range(repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                runners[name]()
                timings[name].append(time.perf_counter() - start)
                if bar is not None:
                    bar.update(1)
        for name in names:
            results[name][grid_key(batch, seq)] = {"batch_size": batch, "sequence_length": seq,
                                                    **latency_stats(timings[name], batch)}
    if bar is not None:
        bar.close()
    return results


def _runner(session, feeds: dict, use_iobinding: bool):
    if not use_iobinding:
        return lambda: session.run(None, feeds)
    import onnxruntime as ort

    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
    for output in session.get_outputs():
        binding.bind_output(output.name, "cuda")

    def run() -> None:
        binding.synchronize_inputs()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return run


def measure_memory(onnx_path: Path, providers: list[str], batch: int, seq: int, n_rows: int) -> dict:
    """Peak memory of creating a session and running it once, in a fresh process."""
    code = ("import json,sys; from projclust_onnx.benchmark.memory import measure; "
            "print(json.dumps(measure(*json.loads(sys.argv[1]))))")
    args = json.dumps([str(onnx_path), providers, batch, seq, n_rows])
    done = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "grid_point": grid_key(batch, seq)}


def evaluate(sessions: dict, tokenizer, data: LabeledData | None, fidelity_texts: list[tuple[str, ...]],
             max_length: int, progress: bool = False) -> tuple[dict, dict]:
    """Metrics per model on the labeled data, and the mean cosine of each model's outputs
    against the first (original) model's on the same texts."""
    from projclust_onnx.common.metrics import score

    texts = data.texts if data is not None else fidelity_texts
    outputs = {name: _outputs(s, tokenizer, texts, max_length, progress, name) for name, s in sessions.items()}
    reference = outputs[next(iter(outputs))][0]
    fidelity = {name: _mean_cosine(reference, out) for name, (out, _) in outputs.items()}
    # Hidden states (a feature-extraction model) have no labels to score: accuracy stays None.
    accuracy = {name: (score(data.metrics, data.labels, out) if data is not None and is_logits else None)
                for name, (out, is_logits) in outputs.items()}
    return accuracy, fidelity


def _outputs(session, tokenizer, texts, max_length: int, progress: bool, name: str) -> tuple[np.ndarray, bool]:
    """First output per text: logits as they are (True), hidden states mean-pooled over the mask (False)."""
    from projclust_onnx.common.progress import new_bar
    from projclust_onnx.pipeline.fidelity import pooled_outputs

    bar = (lambda starts: new_bar(starts, desc=f"evaluate {name}", unit="batch")) if progress else None
    return pooled_outputs(session, tokenizer, texts, max_length, bar)


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)).mean())


def machine_description() -> str:
    import onnxruntime as ort

    return f"{platform.machine()}, {os.cpu_count()} cores, onnxruntime {ort.__version__} ({ort.get_device()})"


def run_benchmark(models: list[tuple[str, Path]], output_dir: Path, *, provider: str = "auto",
                  batch_sizes=(1, 8), sequence_lengths=(32, 128), warmup: int = 3, repeats: int = 20,
                  threads: int = 0, data: LabeledData | None = None, fidelity_texts=None,
                  fidelity_source: str | None = None, max_length: int = 128, memory: bool = True,
                  plots: bool = True, progress: bool = True, overwrite: bool = False,
                  perplexity_texts: list[str] | None = None) -> dict:
    """Benchmark `models` (the first is the original) and write report.json, report.md and plots.

    `fidelity_texts` (tuples of one or two texts) measure fidelity without labels. For a
    decoder (a KV-cache export), latency is one decode step after each sequence length of
    cached positions, and `perplexity_texts` give perplexity in windows of max_length tokens.
    A previous report in output_dir is replaced only with overwrite, and atomically.
    """
    from projclust_onnx.common.threads import available_cpus
    from projclust_onnx.pipeline.model_files import resolve_onnx_file
    from projclust_onnx.pipeline.output_dir import check_output_dir, clean_leftovers, staged_directory

    clean_leftovers(Path(output_dir))
    output_dir = check_output_dir(Path(output_dir), overwrite, [Path(d) for _, d in models], kind="benchmark")
    threads = threads or available_cpus()
    if len(models) < 1:
        raise ValueError("give at least one model directory")
    names = [name for name, _ in models]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be distinct: {names}")
    providers = resolve_providers(provider)
    paths = {name: resolve_onnx_file(Path(directory)) for name, directory in models}
    check_comparable(models, sequence_lengths)
    sessions = {name: open_session(path, providers, threads) for name, path in paths.items()}
    n_rows, dim = _table_shape(paths[names[0]])
    grid = [(b, s) for b in batch_sizes for s in sequence_lengths]
    use_iobinding = providers[0] == "CUDAExecutionProvider"
    latency = measure_latency(sessions, grid, n_rows, warmup, repeats, use_iobinding, progress)
    from projclust_onnx.benchmark.decoder import is_decoder, perplexity

    decoder = is_decoder(sessions[names[0]])
    if perplexity_texts and not decoder:
        raise ValueError("--perplexity-text needs a causal LM exported with its KV cache "
                         "(optimum-cli export onnx --task text-generation-with-past)")
    scores = {name: None for name in names}
    if perplexity_texts:
        from transformers import AutoTokenizer

        scores = perplexity(sessions, AutoTokenizer.from_pretrained(paths[names[0]].parent), perplexity_texts,
                            max_length)

    report = {"schema_version": SCHEMA_VERSION, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_description(), "provider": providers[0], "decoder": decoder,
              "grid": {"batch_sizes": list(batch_sizes), "sequence_lengths": list(sequence_lengths),
                       "warmup": warmup, "repeats": repeats, "threads": threads},
              "data": None, "fidelity_source": fidelity_source if fidelity_texts else None, "models": {}}
    accuracy, fidelity = {n: None for n in names}, {n: None for n in names}
    if data is not None or fidelity_texts:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(paths[names[0]].parent)
        accuracy, fidelity = evaluate(sessions, tokenizer, data, fidelity_texts or [], max_length, progress)
        if data is not None:
            report["data"] = {"source": data.source, "samples": len(data.labels), "metrics": list(data.metrics)}
    del sessions
    biggest = (max(batch_sizes), max(sequence_lengths))
    for name, directory in models:
        base = latency[names[0]]
        report["models"][name] = {
            "directory": str(directory),
            **model_sizes(Path(directory), paths[name], n_rows * dim if name == names[0] else None),
            "latency": latency[name],
            "latency_ratio": {k: v["p50_ms"] / base[k]["p50_ms"] for k, v in latency[name].items()},
            "memory": measure_memory(paths[name], providers, *biggest, n_rows) if memory else None,
            "accuracy": accuracy[name], "fidelity_cosine": fidelity[name], "perplexity": scores[name],
        }
    with staged_directory(output_dir, overwrite, kind="benchmark") as stage:
        (stage / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (stage / "report.md").write_text(markdown_report(report))
        if plots:
            from projclust_onnx.benchmark.plots import plot_latency

            plot_latency(report, stage / "latency.png")
    return report


def _config_of(directory: Path) -> dict:
    """The model's config.json (from its folder or the folder above an onnx/ layout), {} where there is none."""
    for folder in (directory, directory.parent):
        with contextlib.suppress(OSError, ValueError):
            data = json.loads((folder / "config.json").read_text())
            if isinstance(data, dict):
                return data
    return {}


def check_comparable(models: list[tuple[str, Path]], sequence_lengths) -> None:
    """Before any session: the models share one vocabulary (the same token ids feed them all), and every
    sequence length fits the positions the original declares (config.json)."""
    configs = {name: _config_of(Path(directory)) for name, directory in models}
    vocabularies = {name: c["vocab_size"] for name, c in configs.items() if isinstance(c.get("vocab_size"), int)}
    if len(set(vocabularies.values())) > 1:
        shown = ", ".join(f"{name} {size:,}" for name, size in vocabularies.items())
        raise ValueError(f"the models have different vocabularies ({shown} tokens); benchmark an original against "
                         "compressed versions of the same model")
    first = configs[models[0][0]]
    positions = first.get("max_position_embeddings") or first.get("n_positions")
    if isinstance(positions, int) and max(sequence_lengths) > positions:
        raise SettingError("sequence_lengths", f"{{}} {max(sequence_lengths)} exceeds the {positions} positions the "
                           f"model declares (max_position_embeddings in its config.json); give lengths up to "
                           f"{positions}")


def _table_shape(onnx_path: Path) -> tuple[int, int]:
    from projclust_onnx.passes import search_word_embedding
    from projclust_onnx.pipeline.model_files import load_model

    matches = search_word_embedding(load_model(onnx_path).graph).matches
    if len(matches) != 1:
        raise ValueError(f"the first model ({onnx_path}) must be the original with one word-embedding table")
    return matches[0].shape


def model_settings(model: dict) -> str:
    """One line saying how a model was compressed, from its projclust_config.json."""
    c = model.get("compression")
    if not c:
        return "as given (not compressed by projclust-onnx)"
    calibration = ", ".join(Path(p).name for p in c.get("calibration_text") or []) or c.get("calibration_dataset")
    weighting = f"calibration: {calibration or 'none'}, special-token weight {c['special_token_weight']:g}"
    if c.get("target_ratio"):
        return f"chosen for 1/{c['target_ratio']:g} of the table's bytes: {c.get('chosen', '?')}, {weighting}"
    budget = f"{c['compression']:.0%} budget" if c.get("compression") else "rank given"
    storage = f", U {c['storage']}" if c.get("storage") not in (None, FLOAT_U) else ""
    return (f"{c['method']}, k={c['n_clusters']}, j={c.get('rank', '?')}{storage}, {budget}, layout={c['layout']}, "
            f"{weighting}")


def markdown_report(report: dict) -> str:
    """How it was run, each model's settings, size, accuracy and fidelity, then latency with its spread."""
    grid = report["grid"]
    lines = [f"# Benchmark ({report['provider']}, {report['machine']}, {report['date']})", "",
             f"{grid['warmup']} warmup and {grid['repeats']} timed runs per model and grid point, models "
             f"interleaved run by run; {grid.get('threads', '?')} intra-op threads.", ""]
    if report.get("fidelity_source"):
        lines += [f"Fidelity: mean cosine to the original's outputs on {report['fidelity_source']}.", ""]
    lines += ["| model | settings |", "|---|---|"]
    lines += [f"| {name} | {model_settings(m)} |" for name, m in report["models"].items()]
    lines += ["", "| model | file MiB | embedding params | accuracy | fidelity (cos) | peak memory MiB |",
              "|---|---|---|---|---|---|"]
    for name, m in report["models"].items():
        acc = ", ".join(f"{k} {v:.4f}" for k, v in (m["accuracy"] or {}).items()) or "-"
        fid = f"{m['fidelity_cosine']:.4f}" if m["fidelity_cosine"] is not None else "-"
        mem = f"{m['memory']['peak_mb']:.0f}" if m["memory"] and "peak_mb" in m["memory"] else "-"
        emb = f"{m['embedding_parameters']:,}" if m["embedding_parameters"] else "-"
        lines.append(f"| {name} | {m['file_bytes'] / 2**20:.1f} | {emb} | {acc} | {fid} | {mem} |")
    scored = {name: m["perplexity"] for name, m in report["models"].items() if m.get("perplexity")}
    if scored:
        lines += ["", "| model | perplexity | next-token agreement | tokens |", "|---|---|---|---|"]
        lines += [f"| {name} | {p['perplexity']:.3f} | {p['next_token_agreement']:.4f} | {p['tokens']} |"
                  for name, p in scored.items()]
    if report.get("decoder"):
        lines += ["", "Decoder: each latency point is one decode step (one new token per sequence) after `cached` "
                      "positions in the KV cache."]
    seq = "cached" if report.get("decoder") else "seq"
    lines += ["", f"| model | batch | {seq} | p50 ms | p90 ms | p99 ms | IQR ms | seq/s | p50 vs original |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, m in report["models"].items():
        for key, s in m["latency"].items():
            spread = f"{s['iqr_ms']:.2f}" if "iqr_ms" in s else "-"
            lines.append(f"| {name} | {s['batch_size']} | {s['sequence_length']} | {s['p50_ms']:.2f} | "
                         f"{s['p90_ms']:.2f} | {s['p99_ms']:.2f} | {spread} | {s['throughput_seq_per_s']:.1f} | "
                         f"{m['latency_ratio'][key]:.3f} |")
    return "\n".join(lines) + "\n"


def load_labeled_data(args) -> LabeledData | None:
    """Labeled texts from --glue-task or --data-files with --text-column/--label-column."""
    from projclust_onnx.common.data import labeled_texts, load_records

    if args.glue_task:
        from projclust_onnx.common.metrics import glue_task

        text_columns, metrics, _ = glue_task(args.glue_task)
        split = args.split or ("validation_matched" if args.glue_task == "mnli" else "validation")
        records = load_records(f"glue:{args.glue_task}@{split}")
        source = f"glue/{args.glue_task}/{split}"
    elif args.data_files:
        if not args.text_column:
            raise ValueError("--data-files needs --text-column (one or two column names)")
        text_columns, metrics = tuple(args.text_column), ("accuracy",)
        records = load_records(args.data_files)
        source = ", ".join(args.data_files)
    else:
        return None
    if len(text_columns) > 2:
        raise ValueError(f"--text-column takes one or two columns, got {list(text_columns)}")
    texts, labels = labeled_texts(records, list(text_columns), args.label_column)
    if args.max_samples:
        texts, labels = texts[:args.max_samples], labels[:args.max_samples]
    return LabeledData(source, texts, labels, metrics)


def _perplexity_texts(args) -> list[str] | None:
    """The text of --perplexity-text files, one entry per file."""
    if not getattr(args, "perplexity_text", None):
        return None
    texts = []
    for name in args.perplexity_text:
        try:
            texts.append(Path(name).read_text(encoding="utf-8", errors="replace"))
        except OSError as err:
            raise ValueError(f"--perplexity-text {name}: {err.strerror or err}; give readable text files") from None
    return texts


def run_from_args(args) -> int:
    models = []
    for i, spec in enumerate(args.models):
        name, sep, directory = spec.partition("=")
        if not sep:
            name, directory = ("original" if i == 0 else Path(spec).name), spec
        if not Path(directory).exists():
            raise ValueError(f"model directory {directory} does not exist")
        models.append((name, Path(directory)))
    fidelity_texts = None
    if args.fidelity_text:
        from projclust_onnx.core.calibration import read_lines

        fidelity_texts = [(line,) for line in read_lines(args.fidelity_text)][:args.max_samples]
        if not fidelity_texts:
            raise ValueError(f"--fidelity-text {' '.join(args.fidelity_text)} holds no text lines")
    report = run_benchmark(models, Path(args.output), provider=args.provider, batch_sizes=args.batch_sizes,
                           sequence_lengths=args.sequence_lengths, warmup=args.warmup, repeats=args.repeats,
                           threads=args.threads, data=load_labeled_data(args), fidelity_texts=fidelity_texts,
                           fidelity_source=", ".join(args.fidelity_text or []), max_length=args.max_length,
                           memory=not args.no_memory, plots=not args.no_plots, progress=not args.quiet,
                           overwrite=args.overwrite, perplexity_texts=_perplexity_texts(args))
    from projclust_onnx.common.progress import show

    show(f"{markdown_report(report)}\nwrote {Path(args.output) / 'report.json'}")
    return 0
