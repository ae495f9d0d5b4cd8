"""Reading ONNX model directories, saving models, copying their companion files.

Nothing here ever writes into the input; output_dir.py stages and places outputs.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import onnx_ir as ir

from projclust_onnx.common.errors import SettingError, literal

# Above this, ONNX's 2 GB protobuf limit is near: tensors go to an external-data file.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
EXTERNAL_DATA_SUFFIX = "_data"


def onnx_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.onnx") if p.is_file())


def resolve_onnx_file(path: Path, file_name: str | None = None) -> Path:
    """The .onnx file meant by a file path, or by a directory plus an optional file name."""
    if path.is_file():
        return path
    if file_name is not None:
        candidate = path / file_name
        if not candidate.is_file():
            held = [p.name for p in onnx_files(path)]
            what = "is a directory, not a .onnx file," if candidate.is_dir() else "not found"
            raise SettingError("file_name", f"{{}}={literal(repr(file_name))} {what} in {literal(path)}; it holds "
                               f"{literal(held)}")
        return candidate
    found = onnx_files(path)
    if not found:
        raise ValueError(f"{path} holds no .onnx file; export one first (optimum-cli export onnx ...) "
                         "or pass a Hugging Face model directory or hub id")
    if len(found) > 1:
        preferred = [p for p in found if p.name == "model.onnx"]
        if preferred:
            return preferred[0]
        raise SettingError("file_name", f"{literal(path)} holds several .onnx files "
                           f"{literal([p.name for p in found])}; choose one with {{}}")
    return found[0]


def resolve_onnx_files(path: Path, file_name: str | None = None) -> list[Path]:
    """The .onnx files meant by a file path, or a directory (all its .onnx files, or `file_name`)."""
    if path.is_file() or file_name is not None:
        return [resolve_onnx_file(path, file_name)]
    found = onnx_files(path)
    if not found:
        raise ValueError(f"{path} holds no .onnx file; export one first (optimum-cli export onnx ...) "
                         "or pass a Hugging Face model directory or hub id")
    return found


# Where sentence-transformers (backend="onnx") and transformers.js keep their ONNX files: config,
# tokenizer and modules.json stay at the top, the model files (float and quantized variants) go here.
MODEL_SUBDIR = "onnx"


def layout_root(path: Path) -> Path | None:
    """The top of a sentence-transformers or transformers.js folder given as `path` (that folder or its
    `onnx/` subfolder), or None when `path` is not one: the output repeats the whole layout."""
    if not path.is_dir():
        return None
    if not onnx_files(path) and (path / MODEL_SUBDIR).is_dir() and onnx_files(path / MODEL_SUBDIR):
        return path
    companions = ("config.json", "modules.json", "tokenizer.json", "tokenizer_config.json")
    if path.name == MODEL_SUBDIR and onnx_files(path) and any((path.parent / c).is_file() for c in companions):
        return path.parent
    return None


# What a Hugging Face folder holds besides weights that the export does not carry: sentence-transformers'
# modules (modules.json, 1_Pooling/, 2_Normalize/, their configs), model cards, data configs.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".h5", ".msgpack", ".ckpt", ".pt", ".pth", ".onnx", ".onnx_data",
                    ".ot", ".gguf", ".tflite")


def copy_hf_companions(hf_dir: Path, export_dir: Path) -> list[str]:
    """Copy what the export of `hf_dir` lacks (never weights, never files the export wrote), so that an
    output of a sentence-transformers checkpoint loads in SentenceTransformer(out, backend="onnx") with its
    pooling and normalisation."""
    copied = []
    for item in sorted(Path(hf_dir).iterdir()):
        target = export_dir / item.name
        if item.name.startswith(".") or item.name.endswith(_WEIGHT_SUFFIXES) or target.exists():
            continue
        if item.is_file():
            shutil.copy2(item, target)
            copied.append(item.name)
        elif item.is_dir() and not any(p.name.endswith(_WEIGHT_SUFFIXES) for p in item.rglob("*")):
            shutil.copytree(item, target)
            copied.append(item.name + "/")
    return copied


def copy_model_file(path: Path, dest_dir: Path) -> None:
    """Copy a model file the rewrite leaves alone, with the external-data files it refers to."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    for name in [path.name, *sorted(locations)]:
        shutil.copy2(path.parent / name, dest_dir / name)


def _check_without_external_data(proto, path: Path, full_check: bool = False) -> None:
    """onnx.checker on the graph with its external tensors stood in for by graph inputs of the same type and
    shape, and each external tensor's bytes found in its file: everything the checker would say but the
    hard-link rule."""
    import onnx

    graph = onnx.GraphProto()
    graph.CopyFrom(proto.graph)
    external = [t for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    for tensor in external:
        info = {e.key: e.value for e in tensor.external_data}
        where = path.parent / info.get("location", "")
        offset, length = int(info.get("offset", 0)), int(info.get("length", 0))
        if not where.is_file() or where.stat().st_size < offset + length:
            raise ValueError(f"{path} keeps tensor {tensor.name!r} in {where.name}, which is not a regular file "
                             "holding its bytes: re-export it")
    kept = [t for t in graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in external)
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    model.graph.CopyFrom(graph)
    onnx.checker.check_model(model, full_check=full_check)


def _check(proto, path: Path, full_check: bool) -> bool:
    """onnx.checker by path (external data and models over 2 GB included); True where the external data has
    several hard links, which the checker refuses and ONNX Runtime reads (a file shared between two exports,
    as `cp -l` or a deduplicating store leaves it): then everything else is checked without that rule."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=full_check)
        return False
    except Exception as err:
        if "hard link" not in str(err):
            raise
    _check_without_external_data(proto, path, full_check)
    return True


def _read_external_data(proto, folder: Path) -> None:
    """Move each external tensor's bytes into the proto, as onnx.load_external_data_for_model does."""
    import onnx

    for tensor in proto.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        with open(folder / info["location"], "rb") as handle:
            handle.seek(int(info.get("offset", 0)))
            tensor.raw_data = handle.read(int(info["length"])) if "length" in info else handle.read()
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT


def load_model(path: Path, full_check: bool = False) -> ir.Model:
    """Load an ONNX model with its external data, or raise ValueError saying what is wrong.

    `full_check` adds onnx.checker's shape and type inference: a graph whose declared types
    contradict its nodes is refused here rather than failing inside a rewrite."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises DecodeError, onnx raises several others
        raise ValueError(f"{path} is not a readable ONNX model ({type(err).__name__}: {err}); "
                         "the file may be truncated or not ONNX at all: re-export it") from err
    if not proto.graph.node:
        raise ValueError(f"{path} parsed as ONNX but holds no graph nodes; "
                         "the file is truncated or empty: re-export it")
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), None)
            if location is None or not (path.parent / location).is_file():
                raise ValueError(f"{path} keeps tensor {tensor.name!r} in external file {location!r}, which is "
                                 f"missing from {path.parent}; copy it beside the model")
    try:
        hard_linked = _check(proto, path, full_check=False)
    except Exception as err:
        raise ValueError(f"{path} fails onnx.checker ({first_line(err)}); the file may be truncated or damaged: "
                         "re-export it") from err
    if full_check:
        try:
            _check(proto, path, full_check=True)
        except Exception as err:
            raise ValueError(f"{path} fails onnx.checker's full check ({first_line(err)}): its declared types or "
                             "shapes contradict its nodes; fix the export (or the graph's declared outputs)") from err
    try:
        if hard_linked:  # onnx's loader refuses those links too; the bytes were found above
            _read_external_data(proto, path.parent)
        else:
            onnx.load_external_data_for_model(proto, str(path.parent))
    except Exception as err:
        raise ValueError(f"could not read the external data of {path}: {err}") from err
    model = ir.from_proto(proto)
    set_aside_earlier_names(model)
    return model


def set_aside_earlier_names(model: ir.Model) -> None:
    """Rename what an earlier run of this tool wrote (nodes, values and initializers under projclust/, in every
    graph) to earlierN/: a rewrite names what it writes projclust/..., and on our own output compressed again
    those names would collide (a node output written twice, or an initializer of the same name and shape
    taken for the new one). The model's inputs and outputs keep their names: they are its interface."""
    from projclust_onnx.passes.builder import PREFIX

    mark = PREFIX + "/"
    nodes = list(ir.traversal.RecursiveGraphIterator(model.graph))
    graphs = [model.graph, *(attr.as_graph() for node in nodes for attr in node.attributes.values()
                             if attr.type == ir.AttributeType.GRAPH)]
    interface = {id(v) for v in (*model.graph.inputs, *model.graph.outputs)}
    values = [v for g in graphs for v in g.initializers.values()] + [v for n in nodes for v in n.outputs]
    named = [v for v in values if v.name and v.name.startswith(mark) and id(v) not in interface]
    renamed = [n for n in nodes if n.name and n.name.startswith(mark)]
    if not named and not renamed:
        return
    taken = {v.name for v in values if v.name} | {n.name for n in nodes if n.name}
    i = 1
    while any(name.startswith(f"earlier{i}/") for name in taken):
        i += 1
    for item in [*named, *renamed]:
        item.name = f"earlier{i}/" + item.name[len(mark):]


def first_line(err: Exception) -> str:
    text = str(err).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(err).__name__


def model_bytes(path: Path) -> int:
    """Bytes of a model file plus the external-data files it refers to."""
    import onnx

    total = path.stat().st_size
    proto = onnx.load(str(path), load_external_data=False)
    locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    return total + sum((path.parent / loc).stat().st_size for loc in locations if (path.parent / loc).is_file())


def initializer_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def save_model(model: ir.Model, path: Path) -> None:
    """Save, moving tensors to `<name>_data` when the model nears the 2 GB protobuf limit."""
    if initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD:
        ir.save(model, path, external_data=path.name + EXTERNAL_DATA_SUFFIX, size_threshold_bytes=1024)
    else:
        ir.save(model, path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def companion_files(source_dir: Path, skip: set[str], model_dirs: tuple[str, ...] = ()) -> list[tuple[Path, str]]:
    """The config, tokenizer and other non-model files the output repeats, as (source file, path in the output);
    in `model_dirs` (the `onnx/` of a layout folder) only the files that are not models, one level deep.

    Listed before any work, so that what cannot be copied is refused first, by name: a file that cannot be
    read, a broken link, a link that loops back into the folder it sits in."""
    def listing(folder: Path, prefix: str, seen: frozenset, filtered: bool) -> list[tuple[Path, str]]:
        found = []
        data = _external_data_names(folder) if filtered else set()  # written with the models that read them
        for item in sorted(folder.iterdir()):
            rel = f"{prefix}{item.name}"
            if filtered and (item.name in skip or item.suffix == ".onnx" or item.name in data or
                             item.name.endswith((".onnx_data", ".onnx.data")) or item.name.startswith(".")):
                continue
            if item.is_symlink() and not item.exists():
                raise ValueError(f"{item} is a broken symbolic link; remove it or point it at a file, then run again")
            if item.is_dir():
                real = item.resolve()
                if real in seen:
                    raise ValueError(f"{item} is a symbolic link back into a folder that holds it (a loop); the "
                                     "output cannot copy it: remove the link or move it out of the model folder")
                found += listing(item, f"{rel}/", seen | {real}, folder == source_dir and item.name in model_dirs)
            elif item.is_file():
                try:
                    with open(item, "rb") as handle:
                        handle.read(1)
                except OSError as err:
                    raise ValueError(f"{item} cannot be read ({err.strerror}); the output repeats the model "
                                     "folder's files: make it readable, or move it out of the folder") from None
                found.append((item, rel))
        return found

    source_dir = Path(source_dir)
    return listing(source_dir, "", frozenset({source_dir.resolve()}), True)


def _external_data_names(folder: Path) -> set[str]:
    """The external-data files the .onnx files of `folder` refer to."""
    import onnx

    names = set()
    for path in folder.glob("*.onnx"):
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception:  # the plan names a model it cannot read
            continue
        names |= {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    return names


def copy_companions(files: list[tuple[Path, str]], dest_dir: Path) -> list[str]:
    """Copy what companion_files listed into dest_dir; returns the paths written."""
    for source, rel in files:
        (dest_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest_dir / rel)
    return [rel for _, rel in files]
