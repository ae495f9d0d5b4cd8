"""storage/registry.py: the one list of storage formats that budget, chooser, finder, CLI and report read."""

from __future__ import annotations

from test_storage import table

from projclust_onnx.storage.codebook import (
    Codebooks,
    CodebookStorage,
    codebook_bytes,
)
from projclust_onnx.storage.registry import FORMATS, format_of, sized_storages


def test_codebooks_are_registered_and_sized_to_the_budget():
    assert CodebookStorage in FORMATS
    n, d = 20000, 128
    for budget in (n * d * 4 / 6, n * d * 4 / 16, n * d * 4 / 32):
        found = sized_storages(n, d, budget)
        assert found, budget
        for storage in found:  # the largest m that fits: one more sub-vector would not
            assert storage.nbytes(n, d) <= budget
            top = (d if storage.rank is None else storage.rank) // 2
            if storage.m < top:
                assert codebook_bytes(n, d, storage.m + 1, storage.bits, storage.rank) > budget
    assert sized_storages(10, 8, 40) == []  # not even one sub-vector's codebook fits


def test_codebooks_are_a_stored_table_the_registry_knows():
    stored = CodebookStorage(8, rank=16).encode(table(40, 32))
    assert isinstance(stored, Codebooks) and format_of(stored) == CodebookStorage(8, 8, 16)
    assert format_of(stored).label == "codebook 8 x 8-bit, rotation to 16"



def test_u_is_named_one_way_everywhere():
    """Issue 27: inspect, the clustering line and the summary all name U's storage by this one function."""
    from projclust_onnx.storage.registry import QUANTIZE, u_label

    assert u_label("none", 32, "float32") == "float32" and u_label("none", 32, "float16") == "float16"
    assert u_label("int4", 32, "float32") == "int4 block 32" and u_label("int8", 64, "float32") == "int8 block 64"
    assert {u_label(name, 32, "float32") for name in QUANTIZE} == {"float32", "int8 block 32", "int4 block 32"}
