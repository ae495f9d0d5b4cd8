"""ProjClustCompressor on tiny models: outputs, reports, and every refusal leaving no trace."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cli_run import assert_nothing_written
from tiny_models import embedding_model, write_model_dir

from projclust_onnx import EmbeddingFactorization, ProjClustCompressor, ProjClustConfig
from projclust_onnx.common.errors import SettingTypeError
from projclust_onnx.pipeline.model_files import file_sha256
from projclust_onnx.pipeline.parity import ParityError

SMALL = dict(n_clusters=2, rank=3, n_init=2, anneal_steps=2)


@pytest.fixture
def model_dir(tmp_path):
    path = write_model_dir(tmp_path / "tiny", embedding_model(60, 8, token_type=True)[0])
    return path.parent


def test_compress_writes_a_complete_model_directory(model_dir, tmp_path):
    digest = file_sha256(model_dir / "model.onnx")
    out = tmp_path / "out"
    report = ProjClustCompressor.from_pretrained(model_dir).compress(out, ProjClustConfig(**SMALL))
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.onnx", "projclust_config.json",
                                                     "projclust_manifest.json", "projclust_report.json"]
    manifest = json.loads((out / "projclust_manifest.json").read_text())
    assert manifest["tool"] == "projclust-onnx" and manifest["kind"] == "model"
    assert manifest["files"] == ["config.json", "model.onnx", "projclust_config.json", "projclust_report.json"]
    assert file_sha256(model_dir / "model.onnx") == digest  # the input is only read
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    assert ProjClustConfig.from_pretrained(out) == ProjClustConfig(**SMALL, quantize="none")  # resolved, saved
    saved = json.loads((out / "projclust_report.json").read_text())
    assert saved["n_clusters"] == 2 and saved["rank"] == 3 and saved["n_rows"] == 60 and saved["dim"] == 8
    assert saved["embedding_params_after"] == 60 * 3 + 2 * 3 * 8
    assert saved["parity_max_abs_diff"] <= saved["parity_tolerance"] == 1e-4
    assert 0 < report.relative_error < 1
    assert report.file_bytes_after == (out / "model.onnx").stat().st_size
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "token_type_ids"]


def test_svd_method_is_one_cluster(model_dir, tmp_path):
    report = ProjClustCompressor.from_pretrained(model_dir).compress(
        tmp_path / "svd", ProjClustConfig(method="svd", compression=0.5))
    assert report.n_clusters == 1 and report.cluster_id_bytes == 0
    assert report.embedding_params_after <= 0.5 * 60 * 8


def test_occupied_output_is_refused_unless_overwrite(model_dir, tmp_path):
    out = tmp_path / "out"
    compressor = ProjClustCompressor.from_pretrained(model_dir)
    compressor.compress(out, ProjClustConfig(**SMALL))
    with pytest.raises(ValueError, match="holds an earlier output; pass overwrite=True"):
        compressor.compress(out, ProjClustConfig(**SMALL, seed=1))
    compressor.compress(out, ProjClustConfig(**SMALL, seed=1), overwrite=True)
    assert ProjClustConfig.from_pretrained(out).seed == 1


def test_overwrite_keeps_an_earlier_output_the_user_added_to(model_dir, tmp_path):
    """Issue 16: a file the user put into an earlier output is never deleted, overwrite or not."""
    out = tmp_path / "out"
    compressor = ProjClustCompressor.from_pretrained(model_dir)
    compressor.compress(out, ProjClustConfig(**SMALL))
    (out / "keep.txt").write_text("precious")
    (out / "runs").mkdir()
    before = sorted(p.name for p in out.iterdir())
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=r"holds files this tool did not write \(keep.txt, runs/\)"):
            compressor.compress(out, ProjClustConfig(**SMALL, seed=1), overwrite=overwrite)
    assert sorted(p.name for p in out.iterdir()) == before and (out / "keep.txt").read_text() == "precious"
    assert ProjClustConfig.from_pretrained(out).seed == 0


def test_overwrite_never_replaces_a_directory_without_a_model(model_dir, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match="refusing to replace .* not an earlier output of this tool \\(thesis.tex\\)"):
        ProjClustCompressor.from_pretrained(model_dir).compress(home, ProjClustConfig(**SMALL), overwrite=True)
    assert [p.name for p in home.iterdir()] == ["thesis.tex"]


def test_compressing_a_compressed_model_is_refused(model_dir, tmp_path):
    ProjClustCompressor.from_pretrained(model_dir).compress(tmp_path / "once", ProjClustConfig(**SMALL))
    with pytest.raises(ValueError, match="already factorized"):
        ProjClustCompressor.from_pretrained(tmp_path / "once").compress(tmp_path / "twice", ProjClustConfig(**SMALL))


def test_output_inside_the_input_is_refused(model_dir):
    with pytest.raises(ValueError, match="would hold or replace the input"):
        ProjClustCompressor.from_pretrained(model_dir).compress(model_dir, ProjClustConfig(**SMALL), overwrite=True)


def test_parity_failure_writes_nothing(model_dir, tmp_path, monkeypatch):
    real = EmbeddingFactorization.reconstruct
    monkeypatch.setattr(EmbeddingFactorization, "reconstruct", lambda self: real(self) + 1e-2)
    with pytest.raises(ParityError, match="differs from the dense reconstruction"):
        ProjClustCompressor.from_pretrained(model_dir).compress(tmp_path / "out", ProjClustConfig(**SMALL))
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]  # no staging directory left behind


def test_external_data_input_is_read(tmp_path):
    src = write_model_dir(tmp_path / "ext", embedding_model(60, 8)[0], external=True).parent
    report = ProjClustCompressor.from_pretrained(src).compress(tmp_path / "out", ProjClustConfig(**SMALL))
    assert report.file_bytes_before > (src / "model.onnx").stat().st_size  # the data file counted


def test_external_data_with_a_second_hard_link_is_read(tmp_path):
    """onnx's checker refuses a data file with several hard links (its hardlink-attack rule); ONNX Runtime reads
    it, and so do we: a model copied with `cp -al` or deduplicated by a backup tool compresses."""
    src = write_model_dir(tmp_path / "ext", embedding_model(60, 8)[0], external=True).parent
    os.link(src / "model.onnx_data", tmp_path / "another-name")
    assert (src / "model.onnx_data").stat().st_nlink == 2
    with pytest.raises(onnx.checker.ValidationError, match="multiple hard links"):  # what the case is about
        onnx.checker.check_model(str(src / "model.onnx"), full_check=True)
    report = ProjClustCompressor.from_pretrained(src).compress(tmp_path / "out", ProjClustConfig(**SMALL))
    assert report.parity_max_abs_diff <= report.parity_tolerance
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input_ids": np.array([[0, 59, 7]])})[0].shape == (1, 3, 8)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda d: (d / "model.onnx").write_bytes(b"\x08\x07garbage-that-is-not-protobuf\xff\xff"),
         "not a readable ONNX model"),
        (lambda d: (d / "model.onnx").write_bytes(embedding_model(60, 8)[0].SerializeToString()[:300]),
         "not a readable ONNX model|truncated"),
        (lambda d: (d / "model.onnx_data").unlink(), "external file 'model.onnx_data', which is missing"),
    ],
    ids=["corrupt", "truncated", "missing-external-data"],
)
def test_unreadable_models_are_refused(tmp_path, make, match):
    src = write_model_dir(tmp_path / "src", embedding_model(60, 8)[0], external=True).parent
    make(src)
    with pytest.raises(ValueError, match=match):
        ProjClustCompressor.from_pretrained(src).compress(tmp_path / "out", ProjClustConfig(**SMALL))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("model_kwargs", "config", "match"),
    [
        ({"ids_from_computation": True}, ProjClustConfig(**SMALL), "no word-embedding lookup found"),
        ({"second_lookup": True}, ProjClustConfig(**SMALL), "2 word-embedding candidates"),
        ({"stranger": True}, ProjClustConfig(**SMALL), "ReduceSum 'table_sum', which is neither a lookup nor"),
        ({"tied": True}, ProjClustConfig(target_ratio=4, n_init=1),
         "target_ratio cannot be used with a tied LM head"),
        ({}, ProjClustConfig(n_clusters=61, rank=2), "n_clusters=61 must be <= the table's 60 rows"),
        ({}, ProjClustConfig(n_clusters=2, rank=8), "rank=8 must be < the table's dim=8"),
    ],
    ids=["no-embedding", "two-candidates", "stranger", "tied-target-ratio", "k>n", "rank>=d"],
)
def test_bad_models_and_settings_are_refused_before_any_write(tmp_path, model_kwargs, config, match):
    src = write_model_dir(tmp_path / "src", embedding_model(60, 8, **model_kwargs)[0]).parent
    with pytest.raises(ValueError, match=match):
        ProjClustCompressor.from_pretrained(src).compress(tmp_path / "out", config)
    assert not (tmp_path / "out").exists()


def test_directory_without_a_model_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a .onnx file nor a Hugging Face config.json"):
        ProjClustCompressor.from_pretrained(tmp_path / "empty")
    with pytest.raises(ValueError, match="does not exist"):
        ProjClustCompressor.from_pretrained(tmp_path / "missing.onnx")


def test_every_onnx_file_of_a_directory_is_compressed_one_fit_per_distinct_table(tmp_path, monkeypatch):
    from projclust_onnx import ProjectiveClustering

    src = write_model_dir(tmp_path / "src", embedding_model(60, 8)[0]).parent
    (src / "model.onnx").rename(src / "encoder.onnx")
    onnx.save(embedding_model(60, 8, seed=1)[0], str(src / "decoder.onnx"))
    onnx.save(embedding_model(60, 8, seed=1, tied_copy=True)[0], str(src / "decoder_with_head.onnx"))
    fits = []
    real_fit = ProjectiveClustering.fit
    monkeypatch.setattr(ProjectiveClustering, "fit", lambda self, X, **kw: fits.append(X.copy()) or
                        real_fit(self, X, **kw))
    report = ProjClustCompressor.from_pretrained(src).compress(tmp_path / "out", ProjClustConfig(**SMALL))
    assert len(fits) == 2  # decoder and decoder_with_head share a table: one fit
    assert sorted(f["file"] for f in report.files) == ["decoder.onnx", "decoder_with_head.onnx", "encoder.onnx"]
    assert report.table_copies == 4 and len(report.heads) == 1
    for name in ("decoder.onnx", "decoder_with_head.onnx", "encoder.onnx"):
        inits = onnx.load(str(tmp_path / "out" / name)).graph.initializer
        assert not [t.name for t in inits if sorted(t.dims) == [8, 60]], name
    assert ProjClustCompressor.from_pretrained(src, file_name="decoder.onnx").onnx_paths == [src / "decoder.onnx"]


def test_files_without_the_ids_input_are_copied_unchanged(tmp_path):
    from onnx import TensorProto, helper

    src = write_model_dir(tmp_path / "src", embedding_model(60, 8)[0]).parent
    pixels = helper.make_graph([helper.make_node("Relu", ["pixels"], ["out"])], "vision",
                               [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 3])],
                               [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(pixels, opset_imports=[helper.make_opsetid("", 17)], ir_version=10),
              str(src / "vision.onnx"))
    report = ProjClustCompressor.from_pretrained(src).compress(tmp_path / "out", ProjClustConfig(**SMALL))
    assert (tmp_path / "out" / "vision.onnx").read_bytes() == (src / "vision.onnx").read_bytes()
    assert any("copied unchanged" in f for f in report.files)
    assert report.file_bytes_after == sum(p.stat().st_size for p in (tmp_path / "out").glob("*.onnx"))


def test_large_models_are_written_with_external_data(model_dir, tmp_path, monkeypatch):
    import projclust_onnx.pipeline.model_files as model_files

    monkeypatch.setattr(model_files, "EXTERNAL_DATA_THRESHOLD", 100)  # stands in for the 2 GB limit
    report = ProjClustCompressor.from_pretrained(model_dir).compress(tmp_path / "out", ProjClustConfig(**SMALL))
    assert (tmp_path / "out" / "model.onnx_data").is_file()
    assert report.file_bytes_after > (tmp_path / "out" / "model.onnx").stat().st_size
    onnx.checker.check_model(str(tmp_path / "out" / "model.onnx"), full_check=True)
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = np.array([[0, 59, 3]])
    assert session.run(None, {"input_ids": ids, "token_type_ids": np.zeros_like(ids)})[0].shape == (1, 3, 8)


def test_fp16_model_round_trip(tmp_path):
    src = write_model_dir(tmp_path / "src", embedding_model(60, 8, dtype=np.float16)[0]).parent
    report = ProjClustCompressor.from_pretrained(src).compress(tmp_path / "out", ProjClustConfig(**SMALL))
    assert report.dtype == "float16" and report.parity_tolerance == 2e-2
    written = onnx.load(str(tmp_path / "out" / "model.onnx")).graph.initializer
    on_file = sum(onnx.numpy_helper.to_array(t).nbytes for t in written if t.name.startswith("projclust/"))
    assert report.embedding_bytes_after == on_file  # what the file holds, small constants included
    assert 2 * (60 * 3 + 2 * 3 * 8) + 60 <= on_file <= 2 * (60 * 3 + 2 * 3 * 8) + 60 + 64


def test_head_stored_as_a_transposed_copy_is_rewritten_or_kept_but_never_untied_silently(tmp_path, monkeypatch):
    """Issue 10: Optimum without accelerate stores a tied head as the table's transpose."""
    from projclust_onnx import ProjectiveClustering

    src = write_model_dir(tmp_path / "src", embedding_model(60, 8, tied_copy=True)[0]).parent
    report = ProjClustCompressor.from_pretrained(src).compress(tmp_path / "out", ProjClustConfig(**SMALL))
    assert report.heads == ["MatMul 'lm_head' (copy)"] and report.untied_head is None
    assert report.table_copies == 2 and report.embedding_bytes_before == 2 * 60 * 8 * 4
    names = {t.name for t in onnx.load(str(tmp_path / "out" / "model.onnx")).graph.initializer}
    assert "onnx::MatMul_999" not in names and "bert.embeddings.word_embeddings.weight" not in names
    assert report.embedding_bytes_after < 60 * 8 * 4  # both copies replaced by less than one

    monkeypatch.setattr(ProjectiveClustering, "fit", lambda *a, **k: pytest.fail("clustered before refusing"))
    with pytest.raises(ValueError, match="set head to 'keep'"):
        ProjClustCompressor.from_pretrained(src).compress(tmp_path / "q", ProjClustConfig(target_ratio=4))
    assert not (tmp_path / "q").exists()
    monkeypatch.undo()

    report = ProjClustCompressor.from_pretrained(src).compress(tmp_path / "keep", ProjClustConfig(**SMALL,
                                                                                                  head="keep"))
    assert report.untied_head == "onnx::MatMul_999" and not report.heads
    assert any("UNTIED" in value for _, value in report.summary_rows())
    names = {t.name for t in onnx.load(str(tmp_path / "keep" / "model.onnx")).graph.initializer}
    assert "onnx::MatMul_999" in names  # the head's copy is still there, and the report does not hide it
    assert report.file_bytes_after > report.embedding_bytes_after + 60 * 8 * 4


@pytest.mark.parametrize("form", ["tied", "gemm_head"])
def test_heads_reading_the_table_itself_are_rewritten(tmp_path, form):
    src = write_model_dir(tmp_path / "src", embedding_model(60, 8, **{form: True})[0]).parent
    report = ProjClustCompressor.from_pretrained(src).compress(tmp_path / "out", ProjClustConfig(**SMALL))
    assert len(report.heads) == 1 and ("transpose" if form == "tied" else "gemm") in report.heads[0]
    graph = onnx.load(str(tmp_path / "out" / "model.onnx")).graph
    inits = {t.name for t in graph.initializer}
    # no Transpose of an initializer left for ONNX Runtime to fold into a copy
    assert not [n for n in graph.node if n.op_type == "Transpose" and n.input[0] in inits]
    with pytest.raises(ValueError, match="reads the word table itself, so it cannot be kept dense"):
        ProjClustCompressor.from_pretrained(src).compress(tmp_path / "keep", ProjClustConfig(**SMALL, head="keep"))


def test_unrelated_matrix_of_the_transposed_shape_is_not_a_head(tmp_path):
    model, table = embedding_model(60, 8)
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.ascontiguousarray(table.T) + 1, "other"))
    src = write_model_dir(tmp_path / "src", model).parent
    report = ProjClustCompressor.from_pretrained(src).compress(tmp_path / "out", ProjClustConfig(**SMALL))
    assert report.untied_head is None


@pytest.mark.parametrize("form", ["tied_copy", "tied", "gemm_head"])
def test_fp16_tied_heads_are_rewritten_and_checked(tmp_path, form):
    src = write_model_dir(tmp_path / "src", embedding_model(60, 8, dtype=np.float16, **{form: True})[0]).parent
    report = ProjClustCompressor.from_pretrained(src).compress(tmp_path / "out", ProjClustConfig(**SMALL))
    assert report.dtype == "float16" and len(report.heads) == 1
    assert report.parity_max_abs_diff <= report.parity_tolerance
    inits = onnx.load(str(tmp_path / "out" / "model.onnx")).graph.initializer
    floats = [t for t in inits if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert floats and all(t.data_type == onnx.TensorProto.FLOAT16 for t in floats)  # no float32 factors slipped in


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_tied_head_with_quantized_factors_is_checked_against_the_reconstruction(tmp_path, dtype, quantize):
    src = write_model_dir(tmp_path / "src", embedding_model(200, 32, dtype=dtype, tied_copy=True)[0]).parent
    config = ProjClustConfig(n_clusters=2, rank=16, n_init=1, quantize=quantize, block_size=16)
    report = ProjClustCompressor.from_pretrained(src).compress(tmp_path / "out", config)
    assert report.heads and report.quantize == quantize and report.lookup_form == "standard (tied head)"
    assert report.parity_max_abs_diff <= report.parity_tolerance
    graph = onnx.load(str(tmp_path / "out" / "model.onnx")).graph
    assert "MatMulNBits" in {n.op_type for n in graph.node}
    assert report.embedding_bytes_after < 200 * 32 * np.dtype(dtype).itemsize  # both copies: less than one


def test_directory_refusals_name_the_file_and_write_nothing(tmp_path):
    src = write_model_dir(tmp_path / "src", embedding_model(60, 8)[0]).parent
    onnx.save(embedding_model(60, 8, stranger=True)[0], str(src / "other.onnx"))
    with pytest.raises(ValueError, match="^other.onnx: .*ReduceSum 'table_sum', which is neither a lookup nor"):
        ProjClustCompressor.from_pretrained(src).compress(tmp_path / "out", ProjClustConfig(**SMALL))
    assert not (tmp_path / "out").exists()

    onnx.save(embedding_model(70, 8)[0], str(src / "other.onnx"))  # a table of another shape
    with pytest.raises(ValueError, match="word tables of different shapes or types.*--file-name"):
        ProjClustCompressor.from_pretrained(src).compress(tmp_path / "out", ProjClustConfig(**SMALL))
    assert not (tmp_path / "out").exists()
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    one = ProjClustCompressor.from_pretrained(src, file_name="model.onnx")
    one.compress(tmp_path / "one", ProjClustConfig(**SMALL))
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # the input is only read


@pytest.mark.parametrize(("call", "message"), [
    (lambda d, out: ProjClustCompressor.from_pretrained(None), "model_name_or_path=None must be a path"),
    (lambda d, out: ProjClustCompressor.from_pretrained(5), "model_name_or_path=5 must be a path"),
    (lambda d, out: ProjClustCompressor.from_pretrained(d, file_name=5), "file_name=5 must be a string"),
    (lambda d, out: ProjClustCompressor.from_pretrained(d, verbose="yes"), "verbose='yes' must be True or False"),
    (lambda d, out: ProjClustCompressor.from_pretrained(d).compress(None), "save_dir=None must be a path"),
    (lambda d, out: ProjClustCompressor.from_pretrained(d).compress(out, 5),
     "config=5 must be a ProjClustConfig or a dict of its fields"),
    (lambda d, out: ProjClustCompressor.from_pretrained(d).compress(out, SMALL, overwrite="no"),
     "overwrite='no' must be True or False"),
    (lambda d, out: ProjClustCompressor.from_pretrained(d).compress(out, SMALL, overwrite=None),
     "overwrite=None must be True or False"),
], ids=["path-none", "path-int", "file-name-int", "verbose-str", "save-dir-none", "config-int", "overwrite-str",
        "overwrite-none"])
def test_api_arguments_are_checked_by_type(model_dir, tmp_path, call, message):
    """Issue 16, 5: a TypeError (also a ValueError) naming the parameter, before anything is written."""
    with pytest.raises(TypeError, match=message) as caught:
        call(model_dir, tmp_path / "out")
    assert isinstance(caught.value, ValueError)
    assert not (tmp_path / "out").exists()


def test_unknown_task_is_refused_for_an_onnx_folder_too(model_dir):
    """Issue 16, 5: the task went unchecked (and unused) for an ONNX model."""
    with pytest.raises(ValueError, match="task='bogus' must be one of"):
        ProjClustCompressor.from_pretrained(model_dir, task="bogus")


def test_config_may_be_a_dict(model_dir, tmp_path):
    """Issue 16, 5: a dict is read by ProjClustConfig.from_dict; numpy scalars in it end as plain JSON numbers."""
    config = {**SMALL, "n_clusters": np.int64(2), "compression": None}
    report = ProjClustCompressor.from_pretrained(model_dir).compress(tmp_path / "out", config)
    assert report.n_clusters == 2
    saved = json.loads((tmp_path / "out" / "projclust_config.json").read_text())
    assert saved["clustering"]["n_clusters"] == 2 and saved["budget"]["rank"] == 3
    with pytest.raises(ValueError, match=r"unknown ProjClustConfig keys \['clusters'\]"):
        ProjClustCompressor.from_pretrained(model_dir).compress(tmp_path / "out2", {"clusters": 2})


def test_all_zero_table_writes_strict_json(tmp_path):
    """Issue 16, 6: the relative error of an all-zero table is null with a reason, not NaN."""
    proto, table = embedding_model(60, 8)
    name = "bert.embeddings.word_embeddings.weight"
    zero = next(t for t in proto.graph.initializer if t.name == name)
    zero.CopyFrom(onnx.numpy_helper.from_array(np.zeros_like(table), name))
    src = write_model_dir(tmp_path / "zero", proto).parent
    report = ProjClustCompressor.from_pretrained(src).compress(tmp_path / "out", ProjClustConfig(**SMALL))
    text = (tmp_path / "out" / "projclust_report.json").read_text()

    def refuse(constant):
        raise AssertionError(f"{constant} in the report")

    saved = json.loads(text, parse_constant=refuse)
    assert saved["relative_error"] is None and "all zeros" in saved["relative_error_reason"]
    assert report.relative_error is None
    assert dict(report.summary_rows())["relative error"].startswith("undefined: the table is all zeros")


def test_strict_json_replaces_what_is_not_finite():
    from projclust_onnx.pipeline.report import strict_json

    got = strict_json({"a": float("nan"), "b": [float("inf"), 1.0], "c": {"d": -float("inf")}, "e": 2})
    assert got == {"a": None, "a_reason": "the value was nan, which JSON cannot hold", "b": [None, 1.0],
                   "c": {"d": None, "d_reason": "the value was -inf, which JSON cannot hold"}, "e": 2}


def test_storage_much_smaller_than_asked_gives_a_notice(tmp_path, caplog):
    """Issue 16, 6: int4 on d=64 can only take rank 32, far under the 40% budget: said, and shown in the summary."""
    src = write_model_dir(tmp_path / "d64", embedding_model(200, 64)[0]).parent
    config = ProjClustConfig(n_clusters=2, quantize="int4", n_init=2, anneal_steps=2)
    with caplog.at_level("WARNING", logger="projclust_onnx.pipeline.compressor"):
        report = ProjClustCompressor.from_pretrained(src).compress(tmp_path / "out", config)
    assert report.rank == 32 and report.compression_asked == 0.4 and report.compression_realised > 0.7
    notices = [r.getMessage() for r in caplog.records if "notice" in r.getMessage()]
    assert len(notices) == 1 and "not the 40% asked for" in notices[0] and "multiples of the block size 32" in \
        notices[0]
    assert dict(report.summary_rows())["compression"] == \
        f"asked 40%, realised {report.compression_realised:.0%} of the stored table's bytes"
    saved = json.loads((tmp_path / "out" / "projclust_report.json").read_text())
    assert saved["compression_asked"] == 0.4 and saved["compression_realised"] == report.compression_realised


def test_budget_that_is_filled_gives_no_notice(model_dir, tmp_path, caplog):
    config = ProjClustConfig(n_clusters=2, compression=0.4, n_init=2, anneal_steps=2)
    with caplog.at_level("WARNING", logger="projclust_onnx.pipeline.compressor"):
        report = ProjClustCompressor.from_pretrained(model_dir).compress(tmp_path / "out", config)
    assert report.undersize_notice() is None and not [r for r in caplog.records if "notice" in r.getMessage()]
    assert 0.3 < report.compression_realised < 0.5 and "compression" in dict(report.summary_rows())


def test_file_name_that_is_a_directory_is_called_one(model_dir):
    """Issue 16, 6: not "not found"."""
    (model_dir / "sub.onnx").mkdir()
    with pytest.raises(ValueError, match="file_name='sub.onnx' is a directory, not a .onnx file, in"):
        ProjClustCompressor.from_pretrained(model_dir, file_name="sub.onnx")


def test_the_word_table_is_analysed_once_per_file(tmp_path, monkeypatch):
    """A tied seq2seq export (t5: encoder, decoder, decoder with past and the merged decoder, whose If reads the
    table in both branches): the finder runs exactly once per .onnx file, however many passes read its answer
    (the reference, the tied rewrite) and however many lookups and heads the file holds."""
    from projclust_onnx.passes import word_embedding
    from tiny_checkpoints import export_checkpoint

    src = export_checkpoint("t5", tmp_path / "t5")
    searched = []
    real_search = word_embedding.EmbeddingSearch  # built once by every search_word_embedding call, however imported

    class CountedSearch(real_search):
        def __init__(self, *args, **kwargs):
            searched.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(word_embedding, "EmbeddingSearch", CountedSearch)
    report = ProjClustCompressor.from_pretrained(src).compress(
        tmp_path / "out", ProjClustConfig(compression=0.4, n_clusters=2, n_init=1, anneal_steps=2), verbose=False)
    files = sorted(p.name for p in src.glob("*.onnx"))
    assert "decoder_model_merged.onnx" in files and sorted(f["file"] for f in report.files) == files
    assert report.heads and max(f["lookups"] for f in report.files) == 2  # the merged decoder's two branches
    assert len(searched) == len(files)


def test_a_factorization_of_another_type_is_refused_by_name(model_dir, tmp_path):
    with pytest.raises(SettingTypeError) as caught:
        ProjClustCompressor.from_pretrained(model_dir).compress(tmp_path / "out", ProjClustConfig(**SMALL),
                                                                factorization="x")
    assert isinstance(caught.value, ValueError)
    assert str(caught.value).startswith("factorization='x' must be an EmbeddingFactorization")
    assert_nothing_written(tmp_path / "out")


def test_a_table_of_width_1_has_no_rank_to_factorize_into(tmp_path):
    src = write_model_dir(tmp_path / "narrow", embedding_model(50, 1, position=False)[0]).parent
    with pytest.raises(ValueError, match="no rank below it"):
        ProjClustCompressor.from_pretrained(src).compress(tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_an_output_name_of_240_characters_is_written(model_dir, tmp_path):
    """A name near the file system's 255 bytes: the stage beside it (`.NAME.tmp-...`) must not exceed them."""
    out = tmp_path / ("o" * 240)
    ProjClustCompressor.from_pretrained(model_dir).compress(out, {"rank": 3, "n_clusters": 2, "n_init": 2})
    assert (out / "model.onnx").is_file() and (out / "projclust_manifest.json").is_file()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{out.name[:20]}")]
