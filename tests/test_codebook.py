"""Codebook storage (storage/codebook.py): bytes as written, round trips, the opset-13 lookup under ONNX Runtime
against the decoded table, the allocation, by properties; the k-means, the rotation, the sub-vector layout and the
registry have test files of their own."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from projclust_onnx.passes import LOOKUP_FORMS
from test_storage import lookup_model, run, table

from projclust_onnx.storage.codebook import (
    Codebooks,
    CodebookStorage,
    codebook_bytes,
    eigen_allocation,
    exact_rows,
)
from projclust_onnx.storage.registry import FORMATS, format_of
from projclust_onnx.storage.subvectors import layout

EXAMPLES = [CodebookStorage(16), CodebookStorage(24, 6), CodebookStorage(20, 8, rank=96),
            CodebookStorage(32, 5, rank=128), CodebookStorage(20, 8, rank=96, leading=4)]


@pytest.mark.parametrize("storage", EXAMPLES, ids=repr)
def test_bytes_as_written_and_round_trip(storage):
    n, d = 300, 128
    X = table(n, d)
    stored = storage.encode(X)
    assert stored.nbytes == storage.nbytes(n, d) == codebook_bytes(n, d, storage.m, storage.bits, storage.rank,
                                                                   storage.leading)
    assert stored.shape == (n, d) and format_of(stored) == storage
    assert stored.codes.dtype == np.uint8 and int(stored.codes.max()) < 2 ** storage.bits
    decoded = storage.decode(stored)
    assert decoded.shape == X.shape and decoded.dtype == np.float32
    # Ten rows and three hundred take different BLAS kernels for the rotation's float32 product, which sum in
    # different orders: each value may differ by up to (terms summed) x float32's epsilon x the row's scale.
    rows = storage.decode(stored.rows(slice(10, 20)))
    scale = np.abs(decoded[10:20]).max()
    np.testing.assert_allclose(rows, decoded[10:20], rtol=0, atol=d * np.finfo(np.float32).eps * scale)
    # a codebook is a quantizer: better than the rows' mean, and worse than nothing
    relative = np.linalg.norm(decoded - X) / np.linalg.norm(X)
    assert 0 < relative < np.linalg.norm(X - X.mean(0)) / np.linalg.norm(X)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 64), d=st.integers(1, 40), m_frac=st.floats(0.01, 1.0), bits=st.integers(4, 8),
       rotate=st.booleans(), seed=st.integers(0, 2**16))
def test_any_shape_round_trips_and_few_rows_are_kept_exactly(n, d, m_frac, bits, rotate, seed):
    m = max(1, int(round(m_frac * d)))
    storage = CodebookStorage(m, bits, rank=d if rotate else None, seed=seed)
    X = table(n, d, seed)
    stored = storage.encode(X)
    assert stored.nbytes == storage.nbytes(n, d) and stored.shape == (n, d)
    decoded = storage.decode(stored)
    assert decoded.shape == (n, d) and np.isfinite(decoded).all()
    if n <= 2 ** bits:  # every row can be a centroid of its own: only the centroids' rounding is left (float16,
        # or on a rotation int8 steps of max / 127 and the rotation's own int8 rounding)
        tol = (5e-3 * d if rotate else 2e-3) * (np.abs(X).max() + 1)
        np.testing.assert_allclose(decoded, X, atol=tol)


@pytest.mark.parametrize("form", LOOKUP_FORMS)
@pytest.mark.parametrize("storage", EXAMPLES, ids=repr)
def test_emitted_lookup_under_ort_equals_the_decoded_table(storage, form):
    n, d = 200, 128
    stored = storage.encode(table(n, d, seed=1))
    ids = np.array([[0, 3, n - 1, 5], [7, 7, 2, 199]], np.int64)
    model = lookup_model(storage, stored, n, d, form)
    ops = {node.op_type for node in model.graph}
    assert ops <= {"Reshape", "Gather", "Cast", "Add", "Mul", "MatMul", "Concat"}  # opset-13 only: every runtime
    got = run(model, ids)
    want = storage.decode(stored)[ids.reshape(-1)]
    if stored.rotation is None:
        np.testing.assert_array_equal(got, want)
    else:  # a float32 product in ONNX Runtime against numpy's
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@given(values=st.lists(st.floats(1e-6, 1e3), min_size=1, max_size=60), m=st.integers(1, 60))
def test_eigen_allocation_fills_each_sub_vector_to_its_length(values, m):
    r = len(values)
    m = min(m, r)
    lengths = np.full(m, r // m)
    lengths[: r % m] += 1
    order = eigen_allocation(np.sort(values)[::-1], lengths)
    assert sorted(order.tolist()) == list(range(r))
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    for g in range(m):  # the directions of each sub-vector appear in decreasing-eigenvalue order
        group = order[bounds[g]:bounds[g + 1]]
        assert np.all(np.diff(group) > 0)


def test_a_row_weight_of_zero_still_gets_the_nearest_code():
    X = table(100, 16, seed=3)
    w = np.ones(100)
    w[:50] = 0.0
    stored = CodebookStorage(4).encode(X, w)
    decoded = stored.dequantize()
    m, K, s = stored.codebooks.shape
    for i in (0, 10, 49):  # each sub-vector's code is its nearest centroid
        parts = X[i].reshape(m, s)
        dist = ((stored.codebooks.astype(np.float32) - parts[:, None, :]) ** 2).sum(-1)
        np.testing.assert_array_equal(stored.codes[i], dist.argmin(1))
    assert np.isfinite(decoded).all()


@pytest.mark.slow  # seconds each: kept out of the 5-minute suite, run by CI
def test_the_chooser_picks_codebooks_where_they_win_and_int4_where_it_wins():
    """Rows drawn around 200 prototypes: each sub-vector takes few distinct values, which a codebook holds
    almost exactly and 4-bit steps do not. Rows whose norms span four orders of magnitude, each weighted by
    its own energy's inverse: one shared codebook spends its centroids on the large rows, while int4's
    per-block scales follow every row."""
    from projclust_onnx.core.chooser import choose

    rng = np.random.default_rng(0)
    n, d = 2000, 64
    prototypes = rng.standard_normal((200, d))
    clustered = (prototypes[rng.integers(0, 200, n)] + 0.01 * rng.standard_normal((n, d))).astype(np.float32)
    spread = (rng.standard_normal((n, d)) * 10 ** rng.uniform(-2, 2, (n, 1))).astype(np.float32)
    energy = (spread.astype(np.float64) ** 2).sum(1)
    assert energy.max() / energy.min() > 1e4
    budget = n * d * 4 / 6
    picked = {}
    for name, X, weights in (("clustered", clustered, None), ("spread", spread, 1 / energy)):
        choice = choose(X, budget, weights, formats=[c for c in FORMATS if not c.branches], sample_weight=weights)
        labels = {c.label for c in choice.candidates}
        assert any(label.startswith("codebook") for label in labels) and "plain int4 block 32" in labels
        assert choice.best.bytes <= budget * 1.001
        picked[name] = choice.best.label
    assert picked["clustered"].startswith("codebook"), picked
    assert picked["spread"].startswith("plain int4"), picked


def test_the_chooser_picks_2_bit_blocks_where_each_block_holds_four_levels():
    """Every block of 32 values takes four levels on a scale of its own (continuous across rows): 2-bit blocks
    hold it up to the float16 scales, while codebooks at the same bytes do not; at 12x the chooser hands over
    int2 block 32 (41 bytes a row of 128)."""
    from projclust_onnx.core.chooser import choose

    rng = np.random.default_rng(0)
    n, d = 3000, 128
    levels = rng.integers(-1, 3, (n, d // 32, 32))
    X = (levels * rng.uniform(0.5, 2.0, (n, d // 32, 1))).reshape(n, d).astype(np.float32)
    budget = n * d * 4 / 12
    choice = choose(X, budget, None, formats=[c for c in FORMATS if not c.branches])
    labels = {c.label for c in choice.candidates}
    assert any(label.startswith("codebook") for label in labels)
    assert choice.best.label == "plain int2 block 32" and choice.best.bytes == 41 * n
    assert choice.best.error < 1e-5


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_method_codebook_compresses_a_model_within_the_budget_and_checks_it(tmp_path, dtype):
    import onnxruntime as ort
    from tiny_models import embedding_model, write_model_dir

    from projclust_onnx import ProjClustCompressor, ProjClustConfig

    n, d = 3000, 32
    model, table = embedding_model(n, d, dtype=dtype)
    src = write_model_dir(tmp_path / "src", model).parent
    config = ProjClustConfig(method="codebook", compression=0.8)
    report = ProjClustCompressor.from_pretrained(src).compress(tmp_path / "out", config, verbose=False)
    itemsize = np.dtype(dtype).itemsize
    assert report.quantize == "codebook" and report.storage.startswith("codebook")
    assert report.embedding_bytes_after <= 0.2 * n * d * itemsize * 1.001
    assert report.parity_max_abs_diff <= report.parity_tolerance
    assert report.choice["chosen"]["label"] == report.storage
    assert all(c["label"].startswith("codebook") for c in report.choice["candidates"])  # codebooks only
    # parameters: the values stored (n m codes, the centroids' entries, the rotation's), not n d
    m = int(report.storage.split()[1])
    assert n * m < report.embedding_params_after < n * d and report.embedding_compression > 0
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "input_ids"
    summary = dict(report.summary_rows())
    assert any("codebook" in value for value in summary.values())


def test_method_codebook_settings_that_do_not_apply_are_refused(tmp_path):
    from tiny_models import embedding_model, write_model_dir

    from projclust_onnx import ProjClustCompressor, ProjClustConfig
    from projclust_onnx.common.errors import SettingError

    with pytest.raises(SettingError, match="rank"):
        ProjClustConfig(method="codebook", rank=8)
    with pytest.raises(SettingError, match="quantize"):
        ProjClustConfig(method="codebook", quantize="int4")
    with pytest.raises(SettingError, match="n_clusters"):
        ProjClustConfig(method="codebook", n_clusters=3)
    small = write_model_dir(tmp_path / "small", embedding_model(60, 8)[0]).parent
    with pytest.raises(SettingError, match="fewer than one sub-vector"):
        ProjClustCompressor.from_pretrained(small).compress(tmp_path / "out", ProjClustConfig(method="codebook",
                                                                                              compression=0.5))


@pytest.mark.slow  # seconds each: kept out of the 5-minute suite, run by CI
def test_the_cli_inspects_and_refuses_codebooks_by_flag(tmp_path):
    from cli_run import cli, one_line_error
    from tiny_models import embedding_model, write_model_dir

    model_dir = write_model_dir(tmp_path / "wide", embedding_model(3000, 32, position=False)[0]).parent
    done = cli("inspect", "--model", model_dir, "--method", "codebook", "--compression", "0.8")
    assert done.returncode == 0, done.stderr
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("codebooks"))
    assert "within 76,800 bytes" in line and "codebook 16 x 8-bit, rotation to 32" in line
    # a tied head: the sizes compress tries keep its leading directions
    tied_dir = write_model_dir(tmp_path / "tied", embedding_model(3000, 32, position=False, tied=True)[0]).parent
    done = cli("inspect", "--model", tied_dir, "--method", "codebook", "--compression", "0.8")
    assert done.returncode == 0, done.stderr
    assert "(reads the table the codebooks decode to)" in done.stdout
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("codebooks"))
    assert "4 leading in float16" in line and "codebook 16 x" not in line
    refused = one_line_error(cli("compress", "--model", model_dir, "--output", tmp_path / "out", "--method",
                                 "codebook", "--rank", "8"))
    assert "--rank" in refused and "--method codebook" in refused
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # seconds each: kept out of the 5-minute suite, run by CI
def test_faiss_product_quantizer_codes_read_through_our_lookup_decode_as_faiss_decodes():
    """Our codebook layout is plain PQ: FAISS's codes and centroids, stored as Codebooks, give FAISS's rows
    (up to float16 centroids) through decode and through the ONNX lookup."""
    faiss = pytest.importorskip("faiss", reason="faiss-cpu (the test and bench extra) is not installed")
    n, d, m = 2000, 32, 8
    X = table(n, d, seed=5)
    pq = faiss.ProductQuantizer(d, m, 8)
    pq.train(X)
    codes = pq.compute_codes(X)
    centroids = faiss.vector_to_array(pq.centroids).reshape(m, 256, d // m).astype(np.float16)
    stored = Codebooks(codes, centroids, None, 8)
    storage = format_of(stored)
    assert storage == CodebookStorage(m) and stored.nbytes == storage.nbytes(n, d)
    theirs = pq.decode(codes)
    np.testing.assert_allclose(storage.decode(stored), theirs, atol=2e-3 * np.abs(theirs).max())
    ids = np.array([[0, 1, n - 1]], np.int64)
    got = run(lookup_model(storage, stored, n, d, "standard"), ids)
    np.testing.assert_array_equal(got, storage.decode(stored)[ids.reshape(-1)])


def test_rows_carrying_a_percent_of_the_weight_are_kept_exactly():
    """The tool's special-token weighting (30 times the rest of the table each) makes those rows centroids of
    their own: exact up to float16 without a rotation, and on one up to the int8 centroids' steps (a tenth of
    the error of rows kept by weight alone, or less); rows by weight alone are not."""
    from projclust_onnx.core.calibration import with_special_tokens

    X = table(1500, 32, seed=4)
    w = with_special_tokens(np.ones(1500), [0, 1, 2], 30.0)
    assert exact_rows(w, 256).tolist() == [0, 1, 2] and exact_rows(None, 256).size == 0
    for rank in (None, 32):
        decoded = CodebookStorage(8, rank=rank).encode(X, w).dequantize()
        rel = np.linalg.norm(decoded - X, axis=1) / np.linalg.norm(X, axis=1)
        assert rel[:3].max() < (2e-3 if rank is None else 0.1 * np.median(rel[3:])) and np.median(rel[3:]) > 0.1


def test_review_edge_cases_are_handled():
    """Zero weights keep no row exactly; the allocation does not depend on the eigenvalues' scale; a rank above
    d is refused; the lookup's own constants are counted in the bytes."""
    assert exact_rows(np.zeros(10), 256).size == 0
    values = np.linspace(0.9, 0.01, 12)
    lengths = np.full(4, 3)
    assert np.array_equal(eigen_allocation(values, lengths), eigen_allocation(values * 100, lengths))
    assert sorted(eigen_allocation(values, lengths)[::3].tolist()) == [0, 1, 2, 3]  # one leading direction each
    with pytest.raises(ValueError, match="must not exceed"):
        CodebookStorage(4, rank=40).encode(table(20, 32))
    assert codebook_bytes(100, 32, 8, 8) == 100 * 8 + 8 * 256 * 4 * 2 + 4 * 8 + 16


def test_a_compression_codebooks_cannot_fill_is_refused_with_the_range_they_reach(tmp_path):
    from tiny_models import embedding_model, write_model_dir

    from projclust_onnx import ProjClustCompressor, ProjClustConfig
    from projclust_onnx.common.errors import SettingError

    src = write_model_dir(tmp_path / "src", embedding_model(3000, 32)[0]).parent
    with pytest.raises(SettingError, match="ask for a ratio of at least"):
        ProjClustCompressor.from_pretrained(src).compress(tmp_path / "out", ProjClustConfig(method="codebook",
                                                                                            compression=0.4))
    assert not (tmp_path / "out").exists()


def test_compressing_a_codebook_output_again_is_refused_by_name(tmp_path):
    from tiny_models import embedding_model, write_model_dir

    from projclust_onnx import ProjClustCompressor, ProjClustConfig

    model, _ = embedding_model(3000, 32)
    src = write_model_dir(tmp_path / "src", model).parent
    ProjClustCompressor.from_pretrained(src).compress(tmp_path / "out", ProjClustConfig(method="codebook",
                                                                                       compression=0.8), verbose=False)
    with pytest.raises(ValueError, match="already stored as codebooks .*compress the original model instead"):
        ProjClustCompressor.from_pretrained(tmp_path / "out").compress(tmp_path / "again", ProjClustConfig(),
                                                                      verbose=False)
    assert not (tmp_path / "again").exists()


def test_a_codebook_fit_the_memory_cannot_hold_is_refused_before_any_work(tmp_path, monkeypatch):
    from tiny_models import embedding_model, write_model_dir

    import projclust_onnx.storage.clustering as clustering
    from projclust_onnx import ProjClustCompressor, ProjClustConfig
    from projclust_onnx.storage.codebook import codebook_fit_bytes

    table = 250_000 * 384 * 4
    assert table < codebook_fit_bytes(250_000, 384) < 3 * table  # within issue 18's bound of three tables
    model, _ = embedding_model(3000, 32)
    src = write_model_dir(tmp_path / "src", model).parent
    monkeypatch.setattr(clustering, "available_memory", lambda: 1 << 16)
    with pytest.raises(ValueError, match=r"fitting codebooks of the 3000 x 32 table needs about .* GiB is left"):
        ProjClustCompressor.from_pretrained(src).compress(tmp_path / "out", ProjClustConfig(method="codebook",
                                                                                           compression=0.8))
    assert not (tmp_path / "out").exists()


def test_on_a_rotation_the_centroids_are_int8_their_steps_folded_into_the_basis_scales():
    """int8 centroids cost no operator: each coordinate's step rides on its basis vector's float32 scale, so
    decode (and the ONNX lookup) multiply the int8 values by the same basis as before, and the bytes saved
    (one per centroid value) are what codebook_bytes counts."""
    X = table(600, 64, seed=5)
    for rank in (64, 40):
        storage = CodebookStorage(12, rank=rank, rounds=0)
        stored = storage.encode(X)
        assert stored.codebooks.dtype == np.int8 and stored.rotation_scales.dtype == np.float32
        s, _ = layout(rank, 12)
        assert stored.nbytes == 600 * 12 + 12 * 256 * s + (0 if rank % 12 == 0 else 4 * rank) + rank * 64 \
            + 4 * rank + 4 * 12 + 16
        assert np.abs(stored.codebooks).max() == 127  # every coordinate's largest centroid spans the int8 range
        fp16 = CodebookStorage(12, rank=None).encode(X)
        assert fp16.codebooks.dtype == np.float16  # no basis to fold a step into
        ids = np.array([[0, 5, 599]], np.int64)
        got = run(lookup_model(storage, stored, 600, 64, "standard"), ids)
        np.testing.assert_allclose(got, stored.dequantize()[ids.reshape(-1)], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form", ["tied", "tied_copy", "gemm_head"])
def test_a_tied_head_reads_the_decoded_codebooks_from_the_one_stored_copy(tmp_path, form):
    """Every head form reads the table the codebooks decode to, built from the lookup's own initializers
    (one stored copy: no float table or transposed copy is left in the file); under ONNX Runtime its logits
    equal the original model's run with the decoded table in place of the original, lookup and head alike."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
    from tiny_models import embedding_model, write_model_dir

    from projclust_onnx import ProjClustCompressor, ProjClustConfig

    n, d = 3000, 32
    original, _ = embedding_model(n, d, position=False, **{form: True})
    src = write_model_dir(tmp_path / "src", original).parent
    report = ProjClustCompressor.from_pretrained(src).compress(
        tmp_path / "out", ProjClustConfig(method="codebook", compression=0.8, seed=0), verbose=False)
    assert report.storage.startswith("codebook") and report.storage.endswith("4 leading in float16") and report.heads
    head = dict(report.summary_rows())["LM head"]
    assert "decoded 3000 x 32 float32 table (0.4 MiB)" in head and "folds" in head
    assert report.embedding_bytes_after <= 0.2 * n * d * 4 * 1.001
    out = onnx.load(str(tmp_path / "out" / "model.onnx"))
    shapes = [tuple(init.dims) for init in out.graph.initializer]
    assert (n, d) not in shapes and (d, n) not in shapes  # neither the table nor its copy is stored
    assert sum(1 for init in out.graph.initializer if init.name.endswith("/codes")) == 1
    ops = {node.op_type for node in out.graph.node}
    assert "Range" in ops and ops <= {"Gather", "Cast", "Add", "Reshape", "MatMul", "Mul", "Range", "Transpose",
                                      "Gemm", "Relu", "Concat", "Shape"}
    # the reference: the original model, its table (and a tied copy) replaced by the decoded table
    inits = {init.name: init for init in out.graph.initializer}
    stored = Codebooks(numpy_helper.to_array(inits["projclust/table/codes"]),
                       numpy_helper.to_array(inits["projclust/table/codebooks"]).reshape(
                           len(numpy_helper.to_array(inits["projclust/table/offsets"])), 256, -1),
                       numpy_helper.to_array(inits["projclust/table/columns"]) if "projclust/table/columns" in inits
                       else None, 8,
                       numpy_helper.to_array(inits["projclust/table/rotation"]),
                       numpy_helper.to_array(inits["projclust/table/rotation_scales"]),
                       numpy_helper.to_array(inits["projclust/table/leading"]))
    decoded = stored.dequantize()
    for init in original.graph.initializer:
        if init.name == "bert.embeddings.word_embeddings.weight":
            init.CopyFrom(numpy_helper.from_array(decoded, init.name))
        elif init.name == "onnx::MatMul_999":
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(decoded.T), init.name))
    ids = np.random.default_rng(0).integers(0, n, (2, 7))
    want = ort.InferenceSession(original.SerializeToString()).run(None, {"input_ids": ids})
    got = ort.InferenceSession(str(tmp_path / "out" / "model.onnx")).run(None, {"input_ids": ids})
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def _merged_decoder_with_heads(table: np.ndarray, form: str):
    """decoder_model_merged.onnx's shape with a tied head in both If branches: each branch looks the ids up
    and multiplies by the table's transpose, as a Transpose of the table ("transpose") or as a transposed copy
    in the main graph ("copy"); then-branch Relu, else-branch Neg."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n, d = table.shape
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", n])

    def branch(name: str, act: str) -> onnx.GraphProto:
        nodes = [helper.make_node("Gather", ["embed_tokens.weight", "input_ids"], [f"{name}_rows"],
                                  name=f"/{name}/embed_tokens/Gather")]
        weight = "lm_head.weight_T"
        if form == "transpose":
            weight = f"{name}_table_T"
            nodes.append(helper.make_node("Transpose", ["embed_tokens.weight"], [weight], perm=[1, 0],
                                          name=f"/{name}/lm_head/Transpose"))
        nodes += [helper.make_node("MatMul", [f"{name}_rows", weight], [f"{name}_scores"], name=f"/{name}/lm_head"),
                  helper.make_node(act, [f"{name}_scores"], ["logits"], name=f"/{name}/act")]
        return helper.make_graph(nodes, name, [], [out])

    node = helper.make_node("If", ["use_cache_branch"], ["logits"], name="optimum::if",
                            then_branch=branch("with_past", "Relu"), else_branch=branch("no_past", "Neg"))
    inits = [numpy_helper.from_array(table, "embed_tokens.weight")]
    if form == "copy":
        inits.append(numpy_helper.from_array(np.ascontiguousarray(table.T), "lm_head.weight_T"))
    graph = helper.make_graph([node], "merged", [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1])], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("form", ["transpose", "copy"])
def test_the_heads_of_both_branches_of_a_merged_decoder_read_one_decoded_table(form):
    """A merged decoder holds a tied head in each If branch: both read one table decoded in the main graph
    (one Range, one Transpose, none left in the branches), so ONNX Runtime folds one table, not two; either
    branch's logits equal the decoded table's."""
    import onnx
    import onnx_ir as ir
    import onnxruntime as ort
    from projclust_onnx.passes import QuantizeEmbeddingPass, with_cleanup

    rng = np.random.default_rng(0)
    n, d = 600, 24
    table_ = (rng.normal(size=(n, d)) * np.linspace(3, 0.2, d)).astype(np.float32)
    stored = CodebookStorage(6, rank=d, leading=2).encode(table_)
    model = ir.serde.deserialize_model(_merged_decoder_with_heads(table_, form))
    with_cleanup(QuantizeEmbeddingPass(stored, tied=True))(model)
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    main_ops = [node.op_type for node in proto.graph.node]
    assert main_ops.count("Range") == 1 and main_ops.count("Transpose") == 1
    branches = [attr.g for node in proto.graph.node if node.op_type == "If" for attr in node.attribute]
    assert len(branches) == 2
    for graph in branches:
        ops = [node.op_type for node in graph.node]
        assert "Range" not in ops and "Transpose" not in ops and "MatMul" in ops
    assert {init.name for init in proto.graph.initializer}.isdisjoint({"embed_tokens.weight", "lm_head.weight_T"})
    decoded = stored.dequantize()
    ids = rng.integers(0, n, (2, 5))
    session = ort.InferenceSession(proto.SerializeToString())
    for flag, act in ((True, lambda x: np.maximum(x, 0)), (False, np.negative)):
        got = session.run(None, {"input_ids": ids, "use_cache_branch": np.array([flag])})[0]
        np.testing.assert_allclose(got, act(decoded[ids] @ decoded.T), rtol=1e-4, atol=1e-3)


def test_leading_directions_are_stored_as_float16_scalars_and_counted():
    """The t largest directions' coordinates are kept as float16 (n, t), the codes covering the other r - t:
    the rows' parts along those directions come back to float16 rounding, where codes alone err; the bytes
    are as codebook_bytes counts them, and the chooser's sizes keep within the budget with them."""
    rng = np.random.default_rng(0)
    n, d = 2000, 32
    X = (rng.normal(size=(n, d)) * np.r_[[20.0, 10.0], np.ones(d - 2)]).astype(np.float32)
    X += 3.0  # a common direction, as trained tables have
    plain = CodebookStorage(6, rank=d).encode(X)
    kept = CodebookStorage(6, rank=d, leading=2).encode(X)
    assert kept.leading.shape == (n, 2) and kept.leading.dtype == np.float16 and plain.leading is None
    assert kept.nbytes == codebook_bytes(n, d, 6, 8, d, 2) == plain.nbytes + 2 * n * 2 - 6 * 256 * (6 - 5) \
        + (4 * 30 if 30 % 6 else 0) - (4 * 32 if 32 % 6 else 0)
    top = np.linalg.eigh(X.T.astype(np.float64) @ X)[1][:, ::-1][:, :2]
    along = [np.linalg.norm((stored.dequantize() - X) @ top) for stored in (plain, kept)]
    assert along[1] < 0.2 * along[0]
    for storage in CodebookStorage.for_budget(n, d, n * d * 4 / 8, leading=2):
        assert storage.leading == 2 and storage.rank is not None and storage.nbytes(n, d) <= n * d * 4 / 8
    with pytest.raises(ValueError, match="leading"):
        CodebookStorage(6, leading=2)  # no rotation to take them from
