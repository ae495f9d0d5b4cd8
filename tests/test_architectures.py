"""Architectures that slipped through: each compresses, or is refused in one line before the fit; none is
left untied silently (tiny random checkpoints exported by Optimum)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tiny_checkpoints import export_checkpoint

from projclust_onnx import ProjClustCompressor, ProjClustConfig
from projclust_onnx.pipeline.report import REPORT_NAME

FAST = dict(compression=0.4, n_clusters=3, n_init=1, anneal_steps=2)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    cache = {}

    def get(architecture: str):
        if architecture not in cache:
            cache[architecture] = export_checkpoint(architecture, tmp_path_factory.mktemp(architecture))
        return cache[architecture]
    return get


def compress_cli(model, out, *extra):
    return subprocess.run([sys.executable, "-m", "projclust_onnx.cli", "compress", "--model", str(model), "--output",
                           str(out), "--compression", "0.4", "--clusters", "3", "--n-init", "1", "--quiet", *extra],
                          capture_output=True, text=True)


@pytest.mark.slow  # the MobileBERT export alone takes about 20 s
def test_mobilebert_concatenated_head_is_refused_before_the_fit_or_reported_untied(exports, tmp_path):
    """MobileBERT's head multiplies by concat(E^T, dense): never left holding the old table silently."""
    done = compress_cli(exports("mobilebert"), tmp_path / "out")
    assert done.returncode == 2 and "concat(E^T, dense)" in done.stderr and "--head" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "clustering" not in done.stderr
    assert not (tmp_path / "out").exists()
    report = ProjClustCompressor.from_pretrained(exports("mobilebert")).compress(
        tmp_path / "keep", ProjClustConfig(head="keep", **FAST))
    assert report.untied_head and report.files[0]["untied_head"]


def test_xlm_sliced_ids_and_token_type_lookup_are_both_rewritten(exports, tmp_path):
    report = ProjClustCompressor.from_pretrained(exports("xlm")).compress(tmp_path / "out", ProjClustConfig(**FAST))
    assert report.files[0]["lookups"] == 2  # input_ids through a Slice, and token_type_ids
    assert report.heads and report.untied_head is None


def test_whisper_with_64_target_positions_is_checked_within_them(exports, tmp_path):
    report = ProjClustCompressor.from_pretrained(exports("whisper")).compress(tmp_path / "out", ProjClustConfig(**FAST))
    written = json.loads((tmp_path / "out" / REPORT_NAME).read_text())
    assert report.heads and any("copied unchanged" in f for f in written["files"])  # the encoder reads no ids


def test_a_table_with_fewer_rows_than_columns_is_refused(exports, tmp_path):
    done = compress_cli(exports("esm"), tmp_path / "out")
    assert done.returncode == 2 and "33 rows of width 64" in done.stderr and "nothing to gain" in done.stderr
    assert not (tmp_path / "out").exists()
