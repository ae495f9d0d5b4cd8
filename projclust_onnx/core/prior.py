"""A broad prior on how often text lands on each row, for when the user gives no calibration text.

Without text, every row of the table would weigh the same, yet a vocabulary is Zipfian: a few
thousand tokens carry most text. The prior stands in for text in general: the word frequencies of
`wordfreq` (Wikipedia, subtitles, news, books, web text and social media, in 40-odd languages),
tokenized with the model's own tokenizer, in every language the tokenizer covers, plus the
punctuation and digits running text holds between the words (which word lists leave out).

Which languages, and how much of each: a language's coverage is the share of its frequent words
(two characters or more) that the tokenizer keeps as one known token; each language weighs its
coverage to the power COVERAGE_POWER, so that an English vocabulary is mostly English (Romance
languages share many short words with it) while a multilingual one spreads over the languages it
was built for. A tokenizer's cased form gets the capitalised words too.

The prior is a distribution over rows (summing to 1). `calibration.py` scales it to PRIOR_TOKENS
tokens where no text is given, and blends it into the counts of a user's text (PRIOR_SHARE of the
text's tokens), so that rows the text never shows are not abandoned. wordfreq is a dependency;
where it cannot be imported the rows are unweighted, as before, and a warning says so.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

WORDS = 20_000  # most frequent words read for the largest language (two characters or more, no digits); a
# language with a share s of the prior gets WORDS * min(1, 4 s / the largest share), at least PROBE
PROBE = 300  # words whose tokenization measures a language's coverage
COVERAGE_POWER = 12
MIN_SHARE = 0.005  # languages below this share of the prior are left out
PRIOR_TOKENS = 1_000_000  # the token mass the prior stands for where no text is given
PRIOR_SHARE = 0.25  # with a user's text, the prior adds this share of the text's tokens
CASED_SHARE = 0.1  # share of a word's occurrences capitalised (sentence starts, names), for cased tokenizers
# Running text between the words, per word of text (English prose; other scripts' marks are rarer in
# word lists' sources): sentence and clause punctuation, quotes, brackets, digits.
PUNCTUATION = {".": 0.05, ",": 0.05, "'": 0.01, '"': 0.01, "?": 0.005, "!": 0.005, "-": 0.008, ":": 0.003,
               ";": 0.002, "(": 0.003, ")": 0.003, "/": 0.001, "%": 0.0005, "$": 0.0005, "&": 0.0005,
               **{str(digit): 0.002 for digit in range(10)}}


@dataclass
class Prior:
    """weights: a distribution over the table's rows; languages: (code, share) in the prior, largest first."""

    weights: np.ndarray
    languages: list[tuple[str, float]]

    def describe(self) -> str:
        shown = ", ".join(f"{code} {share:.0%}" for code, share in self.languages[:6])
        more = f" and {len(self.languages) - 6} more" if len(self.languages) > 6 else ""
        return f"word frequencies (wordfreq) in {len(self.languages)} languages the tokenizer covers: {shown}{more}"


_CACHE: dict[tuple, Prior | None] = {}
_DIGIT = re.compile(r"\d")


def word_prior(tokenizer, n_rows: int) -> Prior | None:
    """The prior for `tokenizer`'s table of n_rows rows; None (with a warning) where wordfreq is missing or
    the tokenizer covers none of its languages. Kept per tokenizer for the process."""
    key = (getattr(tokenizer, "name_or_path", None) or id(tokenizer), n_rows)
    if key not in _CACHE:
        try:
            _CACHE[key] = _build(tokenizer, n_rows)
        except Exception as err:  # a prior is a refinement: a tokenizer it cannot use leaves the rows unweighted
            logger.warning("the word-frequency prior could not be built with this tokenizer (%s): without "
                           "calibration text the rows are unweighted", str(err).splitlines()[0] if str(err) else
                           type(err).__name__)
            _CACHE[key] = None
    return _CACHE[key]


def _build(tokenizer, n_rows: int) -> Prior | None:
    try:
        import wordfreq
    except ImportError:
        logger.warning("wordfreq is not installed: without calibration text the rows are unweighted; "
                       "pip install wordfreq for the broad word-frequency prior")
        return None
    # Each list read past wordfreq's cache (which would keep every language's whole list, about 1 GB, for the
    # process), cut to the buckets that hold its top WORDS words at once.
    read = getattr(wordfreq.get_frequency_list, "__wrapped__", wordfreq.get_frequency_list)
    lists = {lang: _head(read(lang), WORDS) for lang in wordfreq.available_languages()}
    probes = {lang: _top_words(buckets, PROBE) for lang, buckets in lists.items()}
    coverage = {lang: _coverage(tokenizer, words, freqs) for lang, (words, freqs) in probes.items() if words}
    raw = {lang: c ** COVERAGE_POWER for lang, c in coverage.items() if c > 0}
    total = sum(raw.values())
    shares = {lang: w / total for lang, w in raw.items() if w / total >= MIN_SHARE} if total else {}
    if not shares:
        logger.warning("the tokenizer keeps none of wordfreq's languages' frequent words whole: without "
                       "calibration text the rows are unweighted")
        return None
    norm = sum(shares.values())
    shares = {lang: s / norm for lang, s in shares.items()}
    cased = _is_cased(tokenizer)
    counts = np.zeros(n_rows)
    top = max(shares.values())
    for lang, share in shares.items():
        words, freqs = _top_words(lists[lang], max(PROBE, int(WORDS * min(1.0, 4 * share / top))))
        freqs = freqs / freqs.sum()
        _add(counts, tokenizer, words, freqs * share * (1 - CASED_SHARE if cased else 1))
        if cased:
            _add(counts, tokenizer, [w[:1].upper() + w[1:] for w in words], freqs * share * CASED_SHARE)
    _add(counts, tokenizer, list(PUNCTUATION), np.array(list(PUNCTUATION.values())))
    return Prior(counts / counts.sum(), sorted(shares.items(), key=lambda item: -item[1]))


def _kept(word: str) -> bool:
    """Whether the prior reads a word: two characters or more, no digits (wordfreq writes every digit as 0)."""
    return len(word) >= 2 and not _DIGIT.search(word)


def _head(buckets, limit: int) -> list[list[str]]:
    """The first buckets of a frequency list, up to the one where `limit` words _top_words keeps are reached."""
    total = 0
    for i, bucket in enumerate(buckets):
        total += sum(1 for word in bucket if _kept(word))
        if total >= limit:
            return [list(b) for b in buckets[:i + 1]]
    return [list(b) for b in buckets]


def _top_words(buckets, limit: int) -> tuple[list[str], np.ndarray]:
    """The `limit` most frequent words of wordfreq's list that the prior reads (_kept); bucket i holds words of
    frequency 10^(-i/100)."""
    words, freqs = [], []
    for i, bucket in enumerate(buckets):
        kept = [word for word in bucket if _kept(word)]
        words += kept
        freqs += [10 ** (-i / 100)] * len(kept)
        if len(words) >= limit:
            break
    return words[:limit], np.asarray(freqs[:limit])


def _encode(tokenizer, words: list[str]) -> list[list[int]]:
    """Each word's token ids as the word reads inside running text (after a space); a fast tokenizer's Rust
    backend directly (the Python wrapper costs more than the tokenizing)."""
    texts = [" " + w for w in words]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # without the padding (and truncation) a tokenizer.json may set for batches
        return [[i for i, keep in zip(e.ids, e.attention_mask) if keep]
                for e in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


def _coverage(tokenizer, words: list[str], freqs: np.ndarray) -> float:
    """The frequency-weighted share of `words` the tokenizer encodes as one known token."""
    unknown = tokenizer.unk_token_id
    whole = np.array([len(ids) == 1 and ids[0] != unknown for ids in _encode(tokenizer, words)])
    return float((freqs * whole).sum() / freqs.sum())


def _is_cased(tokenizer) -> bool:
    return _encode(tokenizer, ["The"]) != _encode(tokenizer, ["the"])


def _add(counts: np.ndarray, tokenizer, words: list[str], weights: np.ndarray) -> None:
    """Add each word's weight to every token it is encoded into (ids beyond the table ignored)."""
    encoded = _encode(tokenizer, words)
    ids = np.concatenate([np.asarray(e, np.int64) for e in encoded]) if encoded else np.zeros(0, np.int64)
    per_token = np.repeat(weights, [len(e) for e in encoded])
    keep = ids < len(counts)
    np.add.at(counts, ids[keep], per_token[keep])
