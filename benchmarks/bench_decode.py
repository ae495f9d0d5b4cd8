"""Decode-step latency of a tied LM head, dense vs rewritten with the factors or codebooks, at a Qwen2.5-0.5B-size
table.

A Qwen2-shaped causal LM (vocab 151936, hidden 896, two layers, tied embeddings, random
weights: timing does not depend on them) is exported by Optimum for
text-generation-with-past and compressed by 40% with k clusters (float U), and by 90% with
4-bit U (MatMulNBits in the head); the factors are random
too (compress(factorization=...)), since a fit of random weights would only cost time; and as
codebooks at 1/16 of the table's bytes (random codes, the head reading the decoded table).
Measured in one run, interleaved, batch 1:

- head alone: the table's lookup and the head's product for one position
  (input_ids (1, 1) -> Gather -> MatMul with the transposed copy -> logits), dense vs factorized,
  and vs ONNX Runtime's own 4-bit quantization of the dense table and head (MatMulNBitsQuantizer);
- the whole decode step with a KV cache of `--past` positions;
- peak RSS of creating each head session and running it once (own process each), with ONNX
  Runtime's weight prepacking on (default) and off: prepacking keeps a packed second copy of
  a weight that the Gather also reads.

    python benchmarks/bench_decode.py [--clusters 4] [--compression 0.4] [--int4-compression 0.9] [--past 128]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from common import append_results, markdown_table, session_memory_mb
from onnx import TensorProto, helper, numpy_helper

from projclust_onnx import ProjClustCompressor, ProjClustConfig
from projclust_onnx.common.threads import session_options
from projclust_onnx.core.budget import index_map_bytes, rank_for_bytes
from projclust_onnx.storage.factorization import EmbeddingFactorization

VOCAB, HIDDEN = 151936, 896


def qwen_export(directory: Path, layers: int) -> Path:
    """A random tied Qwen2 with the 0.5B model's table, exported with its KV cache."""
    import torch
    import transformers
    from optimum.exporters.onnx import main_export

    from projclust_onnx.pipeline.compressor import quiet_third_party

    config = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=4864,
                                      num_hidden_layers=layers, num_attention_heads=14, num_key_value_heads=2,
                                      tie_word_embeddings=True, max_position_embeddings=4096)
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(config).eval().save_pretrained(directory / "hf")
    with quiet_third_party():
        main_export(str(directory / "hf"), output=directory / "onnx", task="text-generation-with-past",
                    library_name="transformers", do_validation=False)
    return directory / "onnx"


def head_only(directory: Path, table: np.ndarray) -> Path:
    """input_ids -> Gather(table) -> MatMul(table^T as its own copy) -> logits: the lookup and the tied head."""
    n, d = table.shape
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["hidden"], name="lookup"),
         helper.make_node("MatMul", ["hidden", "head"], ["logits"], name="lm_head")], "head",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", n])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.ascontiguousarray(table.T), "head")])
    directory.mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10),
              str(directory / "model.onnx"))
    return directory


def random_factors(n: int, d: int, k: int, rank: int, seed: int = 0) -> EmbeddingFactorization:
    rng = np.random.default_rng(seed)
    return EmbeddingFactorization(labels=rng.integers(0, k, n), U=rng.standard_normal((n, rank), np.float32),
                                  V=(rng.standard_normal((k, rank, d), np.float32) / np.sqrt(rank)))


def ort_int4(src: Path, directory: Path) -> Path:
    """ONNX Runtime's own 4-bit weight-only quantization (blocks of 32) of the dense lookup and head:
    GatherBlockQuantized for the table, MatMulNBits for the head's copy."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=False, op_types_to_quantize=("Gather", "MatMul"),
                                          quant_axes=(("Gather", 1),))
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src / "model.onnx")), algo_config=config)
    quantizer.process()
    directory.mkdir(parents=True)
    onnx.save(quantizer.model.model, str(directory / "model.onnx"))
    return directory


def random_int4_factors(n: int, d: int, k: int, rank: int, seed: int = 0) -> EmbeddingFactorization:
    """Random factors with U stored in 4 bits (blocks of 32), decoded in float32 as a tied head reads it."""
    from projclust_onnx.storage.quantization import BlockQuantized

    f = random_factors(n, d, k, rank, seed)
    U_q = BlockQuantized.quantize(f.U, 4, 32)
    return EmbeddingFactorization(labels=f.labels, U=U_q.dequantize(np.float32), V=f.V.astype(np.float16), U_q=U_q)


def random_codebooks(n: int, d: int, ratio: float, seed: int = 0):
    """Random codes and int8 centroids on a random int8 rotation, sized as --method codebook sizes them for a tied
    head to 1/ratio of the float table (CodebookStorage.for_budget with the head's leading directions, the full
    rotation): timing does not depend on the values."""
    from projclust_onnx.storage.codebook import TIED_HEAD_LEADING, Codebooks, CodebookStorage
    from projclust_onnx.storage.subvectors import layout

    t = TIED_HEAD_LEADING
    storage = next(s for s in CodebookStorage.for_budget(n, d, n * d * 4 / ratio, leading=t) if s.rank == d)
    rng = np.random.default_rng(seed)
    s, columns = layout(d - t, storage.m)
    return Codebooks(rng.integers(0, 256, (n, storage.m), dtype=np.uint8),
                     rng.integers(-127, 128, (storage.m, 256, s), dtype=np.int8), columns, 8,
                     rng.integers(-127, 128, (d, d), dtype=np.int8),
                     np.full((d, 1), 1e-4 / np.sqrt(d), np.float32),
                     rng.standard_normal((n, t)).astype(np.float16))


def with_codebooks(src: Path, directory: Path, stored) -> Path:
    """`src` with its lookup and tied head reading `stored` (QuantizeEmbeddingPass(tied=True), the pass compress
    runs for --method codebook; applied directly: compress fits its own codebooks and takes no given ones)."""
    from projclust_onnx.passes import QuantizeEmbeddingPass, with_cleanup

    from projclust_onnx.pipeline.model_files import load_model, save_model

    model = load_model(src / "model.onnx")
    result = with_cleanup(QuantizeEmbeddingPass(stored, tied=True))(model)
    assert result.modified
    directory.mkdir(parents=True)
    save_model(model, directory / "model.onnx")
    return directory


def decode_feeds(session, past: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in session.get_inputs():
        if spec.name == "input_ids":
            feeds[spec.name] = np.array([[42]], np.int64)
        elif spec.name == "attention_mask":
            feeds[spec.name] = np.ones((1, past + 1), np.int64)
        elif spec.name == "position_ids":
            feeds[spec.name] = np.array([[past]], np.int64)
        else:  # past_key_values.*: (1, kv heads, past, head dim)
            shape = [1 if d == "batch_size" else past if isinstance(d, str) else d for d in spec.shape]
            feeds[spec.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def interleaved_p50(sessions: dict, feeds: dict, repeats: int) -> dict[str, float]:
    """Median milliseconds per run, the models taking turns so drift hits all alike."""
    times = {name: [] for name in sessions}
    for name, s in sessions.items():  # warm up
        for _ in range(3):
            s.run(None, feeds[name])
    for _ in range(repeats):
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, feeds[name])
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clusters", type=int, default=4)
    parser.add_argument("--compression", type=float, default=0.4)
    parser.add_argument("--int4-compression", type=float, default=0.9)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--past", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--codebook-ratio", type=float, default=16, help="codebooks at 1/R of the table's bytes")
    args = parser.parse_args()

    k = args.clusters
    maps = index_map_bytes(VOCAB)
    rank = rank_for_bytes(VOCAB, HIDDEN, k, (1 - args.compression) * VOCAB * HIDDEN * 4 - maps)
    q_rank = rank_for_bytes(VOCAB, HIDDEN, k, (1 - args.int4_compression) * VOCAB * HIDDEN * 4 - maps, 4, "int4", 32)
    variants = {"factorized": (random_factors(VOCAB, HIDDEN, k, rank),
                               ProjClustConfig(compression=args.compression, n_clusters=k)),
                "int4": (random_int4_factors(VOCAB, HIDDEN, k, q_rank),
                         ProjClustConfig(compression=args.int4_compression, n_clusters=k, quantize="int4"))}
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        tmp = Path(tmp)
        print(f"exporting a random Qwen2 ({VOCAB} x {HIDDEN}, {args.layers} layers) ...", file=sys.stderr)
        export = qwen_export(tmp / "qwen", args.layers)
        rng = np.random.default_rng(1)
        table = (0.02 * rng.standard_normal((VOCAB, HIDDEN))).astype(np.float32)
        dirs = {"head dense": head_only(tmp / "head_dense", table), "step dense": export}
        print("compressing (random factors, no fit) ...", file=sys.stderr)
        for what, src in (("head", dirs["head dense"]), ("step", export)):
            for variant, (factors, config) in variants.items():
                out = tmp / f"{what}_{variant}"
                report = ProjClustCompressor.from_pretrained(src).compress(out, config, factorization=factors,
                                                                           verbose=False)
                assert report.heads, f"{what}: the head was not rewritten"
                dirs[f"{what} {variant}"] = out
        print("quantizing the dense head and lookup with ONNX Runtime's MatMulNBitsQuantizer ...", file=sys.stderr)
        dirs["head ort-int4"] = ort_int4(dirs["head dense"], tmp / "head_ort_int4")
        stored = random_codebooks(VOCAB, HIDDEN, args.codebook_ratio)
        for what, src in (("head", dirs["head dense"]), ("step", export)):
            dirs[f"{what} codebook"] = with_codebooks(src, tmp / f"{what}_codebook", stored)
        paths = {name: d / "model.onnx" for name, d in dirs.items()}
        p50 = {}
        for spinning in (False, True):  # ONNX Runtime spins its pool's threads by default
            options = session_options(0, spinning=spinning)
            sessions = {name: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                        for name, p in paths.items()}
            feeds = {name: ({"input_ids": np.array([[42]], np.int64)} if name.startswith("head")
                            else decode_feeds(s, args.past)) for name, s in sessions.items()}
            p50[spinning] = interleaved_p50(sessions, feeds, args.repeats)
            del sessions
        memory = {(name, prepacking): session_memory_mb(p, {"input_ids": ([1, 1], "int64", 42)}, prepacking)[0]
                  for name, p in paths.items()
                  if name.startswith("head") for prepacking in (True, False)}
        sizes = {name: sum(f.stat().st_size for f in dirs[name].glob("*.onnx*")) for name in dirs}

    rows = []
    labels = {"factorized": f"float U, {args.compression:.0%}, j={rank}",
              "int4": f"int4 U (blocks of 32), {args.int4_compression:.0%}, j={q_rank}",
              "ort-int4": "none: ONNX Runtime's 4-bit quantization of the dense table and head (blocks of 32)",
              "codebook": f"none: codebooks at 1/{args.codebook_ratio:g} of the table ({stored.m} sub-vectors, "
                          f"rotation, {stored.leading.shape[1]} leading directions in float16), the head reading the "
                          "table they decode to (folded at session start)"}
    for spinning in (False, True):
        for what in ("head", "step"):
            for variant, label in labels.items():
                if f"{what} {variant}" not in p50[spinning]:
                    continue
                dense, fact = p50[spinning][f"{what} dense"], p50[spinning][f"{what} {variant}"]
                mem = " / ".join(f"{memory[(f'{what} dense', pre)]:.0f} -> {memory[(f'{what} {variant}', pre)]:.0f}"
                                 for pre in (True, False)) if what == "head" else "n/a"
                rows.append([f"{'head alone (lookup + head)' if what == 'head' else 'whole decode step'}", label,
                             "on" if spinning else "off", round(dense, 2), round(fact, 2), round(dense / fact, 2),
                             f"{sizes[f'{what} dense'] / 2**20:.0f} -> {sizes[f'{what} {variant}'] / 2**20:.0f}",
                             mem])
    macs_dense, macs_fact = VOCAB * HIDDEN, VOCAB * rank + k * rank * HIDDEN
    body = (f"Random Qwen2 with the 0.5B table ({VOCAB} x {HIDDEN}, tied), {args.layers} layers, batch 1, one new "
            f"token with {args.past} cached positions; factorized at {args.compression:.0%} with k={k}, j={rank} "
            f"(head multiply-adds per position {macs_dense / 1e6:.1f}M -> {macs_fact / 1e6:.1f}M, "
            f"{macs_dense / macs_fact:.2f}x fewer), and at {args.int4_compression:.0%} of the table's bytes with "
            f"4-bit U, j={q_rank}; and as codebooks (random codes, `--method codebook`'s layout). p50 of "
            f"{args.repeats} interleaved runs, CPU provider, with "
            "the thread pool's spinning off and on (ONNX Runtime's default is on).\n\n"
            + markdown_table(["what", "factors", "thread spinning", "dense ms", "factorized ms", "speedup", "file MiB",
                              "session peak RSS MiB, prepacking on / off"], rows))
    append_results("Decode step with a tied head factorized (bench_decode.py)", body)


if __name__ == "__main__":
    main()
