"""Causal LMs in the benchmark: latency of one decode step after a KV cache, and perplexity on a text file.

An export with `past_key_values.*` inputs is a decoder: its latency grid's sequence lengths are the
cached positions before one new token (what generation spends its time on), not prompt lengths.
"""

from __future__ import annotations

import numpy as np


def is_decoder(session) -> bool:
    """Whether the session takes a KV cache (Optimum's text-generation-with-past export)."""
    return any(i.name.startswith("past_key_values") for i in session.get_inputs())


def step_feeds(session, n_rows: int, batch: int, cached: int, rng: np.random.Generator) -> dict:
    """One new token per sequence after `cached` positions of a random cache."""
    from projclust_onnx.pipeline.parity import random_feeds

    return random_feeds(session.get_inputs(), "input_ids", n_rows, batch, 1, rng, past=cached)


def perplexity(sessions: dict, tokenizer, texts: list[str], window: int) -> dict[str, dict]:
    """Per model: perplexity over the texts tokenized as one stream and cut into windows of `window` tokens
    (each run from an empty cache), and how often its next-token choice agrees with the first model's."""
    from projclust_onnx.pipeline.parity import random_feeds

    ids = tokenizer("\n\n".join(texts), return_tensors="np")["input_ids"][0]
    windows = [ids[start:start + window] for start in range(0, len(ids), window) if len(ids[start:start + window]) > 1]
    if not windows:
        raise ValueError("the perplexity text holds fewer than 2 tokens; give a longer text file")
    results, reference = {}, None
    for name, session in sessions.items():
        nll, count, choices = 0.0, 0, []
        for tokens in windows:
            feeds = random_feeds(session.get_inputs(), "input_ids", 1, 1, len(tokens), np.random.default_rng(0))
            feeds["input_ids"] = tokens[None].astype(feeds["input_ids"].dtype)
            logits = session.run(None, feeds)[0][0].astype(np.float64)  # (L, vocab)
            shifted = logits[:-1] - logits[:-1].max(axis=1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            nll -= float(log_probs[np.arange(len(tokens) - 1), tokens[1:]].sum())
            count += len(tokens) - 1
            choices.append(logits.argmax(axis=1))
        choices = np.concatenate(choices)
        reference = choices if reference is None else reference
        results[name] = {"perplexity": float(np.exp(nll / count)), "tokens": count, "windows": len(windows),
                         "next_token_agreement": float(np.mean(choices == reference))}
    return results
