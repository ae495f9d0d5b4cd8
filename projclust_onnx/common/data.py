"""Loading text (and labels) from local CSV/JSON files or from the Hugging Face hub.

One loader serves calibration, the benchmark's accuracy runs and fine-tuning, so a
dataset spec means the same thing everywhere: a local file path, or
"NAME[:CONFIG][@SPLIT]" for `datasets.load_dataset` (e.g. "glue:sst2@validation").
"""

from __future__ import annotations

from pathlib import Path

_LOCAL_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".tsv": "csv", ".parquet": "parquet"}


def load_records(source: str | Path | list, split: str | None = None):
    """A datasets.Dataset from local files (one format) or a hub spec."""
    import datasets

    files = [Path(s) for s in source] if isinstance(source, (list, tuple)) else [Path(source)]
    if all(f.suffix.lower() in _LOCAL_FORMATS for f in files):  # local files, never a hub name
        missing = [f for f in files if not f.is_file()]
        if missing:
            what = "is a directory, not a data file" if missing[0].is_dir() else "not found"
            also = f" (and {len(missing) - 1} more of the data files)" if len(missing) > 1 else ""
            raise ValueError(f"data file {missing[0]} {what}{also}; give existing .csv/.json/.jsonl/.tsv/.parquet "
                             "files")
        formats = {_LOCAL_FORMATS[f.suffix.lower()] for f in files}
        if len(formats) > 1:
            raise ValueError(f"data files mix formats {sorted(formats)}; give files of one format")
        fmt = formats.pop()
        kwargs = {"delimiter": "\t"} if files[0].suffix.lower() == ".tsv" else {}
        return datasets.load_dataset(fmt, data_files=[str(f) for f in files], split="train", **kwargs)
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


def column(records, name: str) -> list:
    if name not in records.column_names:
        raise ValueError(f"column {name!r} not found; the data has columns {records.column_names}")
    return list(records[name])
