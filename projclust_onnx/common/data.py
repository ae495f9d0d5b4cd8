"""Loading text (and labels) from local CSV/JSON files or from the Hugging Face hub.

One loader serves calibration, the benchmark's accuracy runs and fine-tuning, so a
dataset spec means the same thing everywhere: a local file path, or
"NAME[:CONFIG][@SPLIT]" for `datasets.load_dataset` (e.g. "glue:sst2@validation").
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

_LOCAL_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".tsv": "csv", ".parquet": "parquet"}


def is_local(source: str | Path | list) -> bool:
    """Whether a dataset spec names local data files (by their extensions), never a hub name."""
    files = [Path(s) for s in source] if isinstance(source, (list, tuple)) else [Path(source)]
    return all(f.suffix.lower() in _LOCAL_FORMATS for f in files)


def check_source(source: str | Path | list, hub: bool = True) -> None:
    """What can be told of a dataset spec without loading it: local files exist, are regular, not empty and
    of one format; with `hub`, a hub name not in the cache is refused while the hub is offline (before a fit,
    rather than after datasets' own retries). ValueError naming the problem."""
    if not is_local(source):
        if not hub:
            return
        offline = any(os.environ.get(v, "0") not in ("", "0") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
        if offline and not _cached(str(source).partition("@")[0].partition(":")[0]):
            raise ValueError(f"dataset {str(source)!r} is not a local .csv/.json/.jsonl/.tsv/.parquet file, and the "
                             "hub is offline (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set): give a local file, or "
                             "unset the variable to load it from the hub")
        return
    files = [Path(s) for s in source] if isinstance(source, (list, tuple)) else [Path(source)]
    missing = [f for f in files if not f.is_file()]
    if missing:
        what = "is a directory, not a data file" if missing[0].is_dir() else "not found"
        also = f" (and {len(missing) - 1} more of the data files)" if len(missing) > 1 else ""
        raise ValueError(f"data file {missing[0]} {what}{also}; give existing .csv/.json/.jsonl/.tsv/.parquet "
                         "files")
    empty = [f for f in files if f.stat().st_size == 0]
    if empty:
        raise ValueError(f"data file {empty[0]} is empty; give a file with a header row and at least one row")
    formats = {_LOCAL_FORMATS[f.suffix.lower()] for f in files}
    if len(formats) > 1:
        raise ValueError(f"data files mix formats {sorted(formats)}; give files of one format")


def _cached(name: str) -> bool:
    """Whether the datasets or hub cache holds anything of the dataset `name` (offline, only those load)."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser()
    roots = [Path(os.environ.get("HF_DATASETS_CACHE", home / "datasets")).expanduser(),
             Path(os.environ.get("HF_HUB_CACHE", home / "hub")).expanduser()]
    keys = (name.replace("/", "___"), "datasets--" + name.replace("/", "--"))
    for root in roots:
        try:
            if any(entry.name.startswith(keys) or entry.name.endswith(keys) for entry in root.iterdir()):
                return True
        except OSError:
            continue
    return False


def load_records(source: str | Path | list, split: str | None = None):
    """A datasets.Dataset from local files (one format) or a hub spec."""
    import datasets

    check_source(source, hub=False)  # datasets says what it cannot load from the hub
    if is_local(source):  # local files, never a hub name
        files = [Path(s) for s in source] if isinstance(source, (list, tuple)) else [Path(source)]
        fmt = _LOCAL_FORMATS[files[0].suffix.lower()]
        kwargs = {"delimiter": "\t"} if files[0].suffix.lower() == ".tsv" else {}
        try:
            return datasets.load_dataset(fmt, data_files=[str(f) for f in files], split="train", **kwargs)
        except Exception as err:  # a malformed file: the parser's reason, in one line
            reason = " ".join(str(err).split())[:300]
            raise ValueError(f"could not read {', '.join(map(str, files))} as {fmt}: {reason}; give a well-formed "
                             f"{fmt} file") from None
    spec = str(source)
    name, _, split_in_spec = spec.partition("@")
    name, _, config = name.partition(":")
    try:
        return datasets.load_dataset(name, config or None, split=split_in_spec or split or "train")
    except Exception as err:
        raise ValueError(f"could not load dataset {spec!r}: {err}. Give a local .csv/.json file, "
                         "or NAME[:CONFIG][@SPLIT] of a dataset on the hub") from err


def labeled_texts(records, text_columns: list[str], label_column: str) -> tuple[list[tuple[str, ...]], list]:
    """(texts as tuples of one or two strings, labels) from named columns."""
    texts = list(zip(*[[str(t) for t in column(records, c)] for c in text_columns]))
    return texts, column(records, label_column)


def class_ids(train_labels: list, eval_labels: list | None = None) -> tuple[list, list | None, list | None]:
    """Labels as a classifier trains on them: (train, eval, class names). Whole numbers and floats stay as they
    are (class ids, regression scores; names None); text labels ("neg", "pos") become class ids in sorted
    order, the same map for eval. Labels of two kinds, or eval classes the training data never shows, are
    refused by name."""
    def kind(labels):
        kinds = {"text" if isinstance(v, str) else "number" if isinstance(v, (int, float, np.number)) and
                 not isinstance(v, bool) else type(v).__name__ for v in labels}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    train_kind = kind(train_labels)
    if train_kind not in ("text", "number"):
        raise ValueError(f"--label-column holds labels of {train_kind} types; give class ids (0, 1, ...), class "
                         "names (text) or scores (floats), one kind for every row")
    if eval_labels is not None and kind(eval_labels) != train_kind:
        raise ValueError(f"the evaluation labels are of another kind ({kind(eval_labels)}) than the training labels "
                         f"({train_kind}); give both files the same label column type")
    if train_kind == "number":
        return list(train_labels), None if eval_labels is None else list(eval_labels), None
    names = sorted(set(train_labels))
    unknown = sorted(set(eval_labels or []) - set(names))
    if unknown:
        raise ValueError(f"the evaluation labels {unknown[:5]} never occur in the training labels {names[:10]}; "
                         "evaluate on the classes the model is trained on")
    index = {name: i for i, name in enumerate(names)}
    return ([index[v] for v in train_labels], None if eval_labels is None else [index[v] for v in eval_labels],
            names)


def column(records, name: str) -> list:
    if name not in records.column_names:
        raise ValueError(f"column {name!r} not found; the data has columns {records.column_names}")
    return list(records[name])
