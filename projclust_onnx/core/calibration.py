"""Token-frequency weights for the clustering: rows that text uses often should fit best.

The paper weighs every row of the table alike, yet a vocabulary is Zipfian: a few
thousand tokens carry most text, and many rows are never used. Counting tokens on
calibration text (with the model's own tokenizer) and using count + smoothing as
each row's sample weight spends the budget where inputs actually land; the
smoothing pseudo-count keeps unseen tokens in the fit.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from projclust_onnx.common.errors import SettingError

logger = logging.getLogger(__name__)

_BATCH = 512  # texts per tokenizer call
_BATCH_CHARS = 1 << 20  # or fewer, when the texts are long: progress shows per call
_READ_BYTES = 1 << 20
_PIECE_CHARS = 1 << 16  # a longer line is tokenized in pieces cut at whitespace


def read_lines(paths: Iterable[str | Path], progress: Callable[[int], None] | None = None) -> Iterator[str]:
    """Non-blank lines of text files, stripped; a line over 64 Ki characters comes in pieces cut at whitespace,
    so a file without newlines is read and tokenized a piece at a time. `progress(n)` hears of each n bytes
    read. Logs a warning for a file with no text and for one that looks binary."""
    for path in paths:
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"calibration text {path} is a directory; give the text files in it")
        if not path.is_file():
            raise ValueError(f"calibration text {path} not found")
        lines = 0
        with path.open("rb") as f:
            block = f.read(_READ_BYTES)
            if _binary(block):
                logger.warning("calibration text %s does not look like text (%s); it is tokenized anyway, but its "
                               "counts weigh rows by noise: give UTF-8 text files", path, _binary(block))
            decoder, carry = codecs.getincrementaldecoder("utf-8")(errors="replace"), ""
            while block:
                *whole, carry = (carry + decoder.decode(block)).split("\n")
                if len(carry) > _PIECE_CHARS:  # no newline for a while: pass on all but the last word
                    cut = max(carry.rfind(" "), carry.rfind("\t"))
                    cut = cut if cut > 0 else len(carry)
                    whole.append(carry[:cut])
                    carry = carry[cut:]
                for line in whole:
                    for piece in _pieces(line):
                        lines += 1
                        yield piece
                if progress is not None:
                    progress(len(block))
                block = f.read(_READ_BYTES)
            for piece in _pieces(carry + decoder.decode(b"", final=True)):
                lines += 1
                yield piece
        if not lines:
            logger.warning("calibration text %s holds no text (empty or blank): it adds no token counts", path)


def _pieces(line: str) -> Iterator[str]:
    """`line` stripped, in pieces of at most _PIECE_CHARS cut at whitespace where there is some."""
    line = line.strip()
    while len(line) > _PIECE_CHARS:
        cut = max(line.rfind(" ", 0, _PIECE_CHARS), line.rfind("\t", 0, _PIECE_CHARS))
        cut = cut if cut > 0 else _PIECE_CHARS
        yield line[:cut].strip()
        line = line[cut:].strip()
    if line:
        yield line


def _binary(head: bytes) -> str | None:
    """Why the first bytes of a file do not look like UTF-8 text, or None when they do."""
    if b"\0" in head:
        return "it holds NUL bytes"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:  # not merely a character cut by the end of the block
            return f"byte {err.start} is not UTF-8"
    return None


def count_tokens(tokenizer, texts: Iterable[str], n_rows: int, bar=None) -> np.ndarray:
    """How often each token id occurs when `tokenizer` encodes `texts` (special tokens included).
    `bar` (a tqdm bar) shows the tokens counted so far."""
    counts = np.zeros(n_rows, dtype=np.int64)
    batch: list[str] = []
    chars = 0

    def flush() -> None:
        # Whole texts are counted on purpose: no truncation, and no warning about length.
        encoded = tokenizer(batch, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        ids = np.concatenate([np.asarray(e, dtype=np.int64) for e in encoded]) if encoded else np.zeros(0, np.int64)
        if ids.size and ids.max() >= n_rows:
            raise ValueError(f"the tokenizer produced id {int(ids.max())} but the table has {n_rows} rows; "
                             "use the model's own tokenizer")
        counts[:] += np.bincount(ids, minlength=n_rows)
        batch.clear()
        if bar is not None:
            bar.set_postfix_str(f"{int(counts.sum()):,} tokens")

    for text in texts:
        batch.append(text)
        chars += len(text)
        if len(batch) == _BATCH or chars >= _BATCH_CHARS:
            flush()
            chars = 0
    if batch:
        flush()
    return counts


def token_weights(counts: np.ndarray, smoothing: float) -> np.ndarray:
    """Sample weight of each row: its count plus the smoothing pseudo-count."""
    if smoothing < 0:
        raise SettingError("calibration_smoothing", f"{{}}={smoothing} must be >= 0")
    weights = counts.astype(np.float64) + smoothing
    if weights.sum() <= 0:
        raise SettingError("calibration_smoothing", "no token was counted and {}=0: every weight is zero; give "
                           "calibration text that holds text, or {} > 0")
    return weights


def with_special_tokens(weights: np.ndarray, special_ids: list[int], multiple: float) -> np.ndarray:
    """Give each special token `multiple` times the total weight of the other rows.

    Special tokens ([CLS], [SEP], ...) occur in every input, and [CLS]/[SEP] draw much
    of the attention: an error there shifts every output. On MiniLM at 40%, fitting
    them exactly lifts the mean sentence-embedding cosine from 0.943 to 0.983.
    """
    special = np.unique([i for i in special_ids if 0 <= i < len(weights)])
    if multiple <= 0 or special.size == 0:
        return weights
    weights = weights.astype(np.float64).copy()
    others = np.delete(weights, special).sum()
    weights[special] = np.maximum(weights[special], multiple * others)
    return weights


def calibration_texts(config, bar=None) -> Iterator[str]:
    """All texts a ProjClustConfig names: its text files, then its dataset's text column.
    `bar` (a tqdm bar) counts the bytes (the characters, of a dataset) read."""
    yield from read_lines(config.calibration_text, bar.update if bar is not None else None)
    if config.calibration_dataset:
        from projclust_onnx.common.data import column, load_records

        for text in column(load_records(config.calibration_dataset), config.calibration_column):
            if text:
                if bar is not None:
                    bar.update(len(str(text)))
                yield str(text)


_COUNTS_CACHE: dict[tuple, np.ndarray] = {}


def calibration_counts(config, n_rows: int, tokenizer, progress: bool = False) -> np.ndarray:
    """Token counts of the config's calibration texts, kept per (texts, tokenizer) for the process,
    so a sweep over budgets and k tokenizes its calibration corpus once. `progress`: a progress bar
    on stderr with the bytes read and the tokens counted."""
    key = (tuple(config.calibration_text), config.calibration_dataset, config.calibration_column,
           getattr(tokenizer, "name_or_path", id(tokenizer)), n_rows)
    if key not in _COUNTS_CACHE:
        with _bar(config, progress) as bar:
            counts = count_tokens(tokenizer, calibration_texts(config, bar), n_rows, bar)
        if not counts.any():
            logger.warning("the calibration text held no tokens: rows are weighted by calibration smoothing alone, "
                           "as without calibration")
        _COUNTS_CACHE[key] = counts
    return _COUNTS_CACHE[key]


@contextlib.contextmanager
def _bar(config, progress: bool):
    """A tqdm bar over the calibration bytes (total known when only files are read), or None."""
    if not progress:
        yield None
        return
    from projclust_onnx.common.progress import new_bar

    files = [Path(p) for p in config.calibration_text]
    total = None if config.calibration_dataset else sum(p.stat().st_size for p in files if p.is_file()) or None
    bar = new_bar(total=total, unit="B", unit_scale=True, desc="  tokenizing calibration text")
    try:
        yield bar
    finally:
        bar.close()


def prior_of(config, n_rows: int, tokenizer):
    """The broad prior (core/prior.py) the config asks for, or None (no prior asked, no tokenizer, or none
    to be had)."""
    if getattr(config, "calibration_prior", "none") != "wordfreq" or tokenizer is None:
        return None
    from projclust_onnx.core.prior import word_prior

    return word_prior(tokenizer, n_rows)


def calibration_weights(config, n_rows: int, tokenizer, progress: bool = False) -> tuple[np.ndarray | None, int]:
    """count + smoothing per row from the config's calibration text, blended with the broad prior (a share
    of the text's tokens, PRIOR_SHARE), or the prior alone (PRIOR_TOKENS) without text; None without either.
    Also the tokens counted in the text.

    What the chooser scores candidates by: how often inputs land on each row."""
    from projclust_onnx.core.prior import PRIOR_SHARE, PRIOR_TOKENS

    prior = prior_of(config, n_rows, tokenizer)
    if not config.uses_calibration:
        if prior is None:
            return None, 0
        return token_weights(prior.weights * PRIOR_TOKENS, config.calibration_smoothing), 0
    counts = calibration_counts(config, n_rows, tokenizer, progress)
    n_tokens = int(counts.sum())
    blended = counts if prior is None else counts + PRIOR_SHARE * max(n_tokens, 1) * prior.weights
    return token_weights(blended, config.calibration_smoothing), n_tokens


def sample_weights(config, n_rows: int, tokenizer, progress: bool = False) -> tuple[np.ndarray | None, int, int]:
    """Row weights a ProjClustConfig asks for: calibration counts (+ smoothing) and the prior, then special tokens.

    Returns (weights or None when unweighted, tokens counted, special tokens weighted).
    """
    if tokenizer is None and not config.uses_calibration:
        return None, 0, 0
    weights, n_tokens = calibration_weights(config, n_rows, tokenizer, progress)
    if weights is None and config.special_token_weight == 0:
        return None, 0, 0
    special = sorted({i for i in tokenizer.all_special_ids if 0 <= i < n_rows}) if tokenizer is not None else []
    if weights is None and not special:
        return None, 0, 0
    weights = np.ones(n_rows) if weights is None else weights
    n_special = len(special) if config.special_token_weight > 0 else 0
    return with_special_tokens(weights, special, config.special_token_weight), n_tokens, n_special
