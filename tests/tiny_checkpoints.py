"""Tiny randomly initialised Hugging Face checkpoints (vocab 5000, hidden 64), exported as users export them.

No real decoder ships offline, so the structure of every exported text model is tested on
these: built from transformers config classes, saved, then exported by Optimum's exporter
(what `optimum-cli export onnx` runs) without accelerate, so a tied head is written as its
own transposed copy of the table.
"""

from __future__ import annotations

from pathlib import Path

VOCAB, HIDDEN = 5000, 64

# architecture -> (config class name, model class name, extra config arguments)
_SMALL = dict(num_attention_heads=2, intermediate_size=128)
ARCHITECTURES = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=HIDDEN, n_layer=2, n_head=2, n_positions=128)),
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(hidden_size=HIDDEN, num_hidden_layers=2, num_key_value_heads=2,
                                                      tie_word_embeddings=True, max_position_embeddings=128,
                                                      **_SMALL)),
    "llama-untied": ("LlamaConfig", "LlamaForCausalLM", dict(hidden_size=HIDDEN, num_hidden_layers=2,
                                                             num_key_value_heads=2, tie_word_embeddings=False,
                                                             max_position_embeddings=128, **_SMALL)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(hidden_size=HIDDEN, num_hidden_layers=2, num_key_value_heads=2,
                                                      tie_word_embeddings=True, max_position_embeddings=128,
                                                      **_SMALL)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(hidden_size=HIDDEN, num_hidden_layers=2,
                                                            num_key_value_heads=2, max_position_embeddings=128,
                                                            **_SMALL)),
    "phi": ("PhiConfig", "PhiForCausalLM", dict(hidden_size=HIDDEN, num_hidden_layers=2, max_position_embeddings=128,
                                                **_SMALL)),
    "bert": ("BertConfig", "BertForMaskedLM", dict(hidden_size=HIDDEN, num_hidden_layers=2,
                                                   max_position_embeddings=128, **_SMALL)),
    "roberta": ("RobertaConfig", "RobertaForMaskedLM", dict(hidden_size=HIDDEN, num_hidden_layers=2,
                                                            max_position_embeddings=130, **_SMALL)),
    "xlm-roberta": ("XLMRobertaConfig", "XLMRobertaForMaskedLM", dict(hidden_size=HIDDEN, num_hidden_layers=2,
                                                                     max_position_embeddings=130, **_SMALL)),
    "albert": ("AlbertConfig", "AlbertForMaskedLM", dict(embedding_size=HIDDEN, hidden_size=HIDDEN,
                                                         num_hidden_layers=2, max_position_embeddings=128, **_SMALL)),
    "electra": ("ElectraConfig", "ElectraForMaskedLM", dict(embedding_size=HIDDEN, hidden_size=HIDDEN,
                                                            num_hidden_layers=2, max_position_embeddings=128,
                                                            **_SMALL)),
    "deberta-v2": ("DebertaV2Config", "DebertaV2ForMaskedLM", dict(hidden_size=HIDDEN, num_hidden_layers=2,
                                                                   max_position_embeddings=128, **_SMALL)),
    "mpnet": ("MPNetConfig", "MPNetForMaskedLM", dict(hidden_size=HIDDEN, num_hidden_layers=2,
                                                      max_position_embeddings=130, **_SMALL)),
    "distilbert": ("DistilBertConfig", "DistilBertForMaskedLM", dict(dim=HIDDEN, n_layers=2, n_heads=2,
                                                                     hidden_dim=128, max_position_embeddings=128)),
    "t5": ("T5Config", "T5ForConditionalGeneration", dict(d_model=HIDDEN, d_kv=32, d_ff=128, num_layers=2,
                                                         num_decoder_layers=2, num_heads=2,
                                                         decoder_start_token_id=0, pad_token_id=0,
                                                         eos_token_id=1)),
    "bart": ("BartConfig", "BartForConditionalGeneration", dict(d_model=HIDDEN, encoder_layers=2, decoder_layers=2,
                                                               encoder_attention_heads=2, decoder_attention_heads=2,
                                                               encoder_ffn_dim=128, decoder_ffn_dim=128,
                                                               max_position_embeddings=128)),
    # Architectures that slip past the usual forms: MobileBERT's head multiplies by concat(E^T, dense), XLM
    # reads the word table with token_type_ids too, a whisper decoder holds 64 positions, ESM has 33 tokens.
    "mobilebert": ("MobileBertConfig", "MobileBertForMaskedLM", dict(hidden_size=HIDDEN, embedding_size=32,
                                                                     num_hidden_layers=2, intra_bottleneck_size=32,
                                                                     true_hidden_size=32, num_feedforward_networks=1,
                                                                     max_position_embeddings=128, **_SMALL)),
    "xlm": ("XLMConfig", "XLMWithLMHeadModel", dict(emb_dim=HIDDEN, n_layers=2, n_heads=2,
                                                    max_position_embeddings=128)),
    "whisper": ("WhisperConfig", "WhisperForConditionalGeneration",
                dict(d_model=HIDDEN, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, max_target_positions=64,
                     max_source_positions=1500, num_mel_bins=80, decoder_start_token_id=1, pad_token_id=0,
                     eos_token_id=2, bos_token_id=1, suppress_tokens=[], begin_suppress_tokens=[])),
    "esm": ("EsmConfig", "EsmForMaskedLM", dict(hidden_size=HIDDEN, num_hidden_layers=2, max_position_embeddings=130,
                                                pad_token_id=1, mask_token_id=32, **_SMALL)),
}
# Vocabulary sizes other than VOCAB (ESM's 33 amino-acid tokens).
VOCAB_OF = {"esm": 33}
TASKS = {"gpt2": "text-generation-with-past", "llama": "text-generation-with-past",
         "llama-untied": "text-generation-with-past", "qwen2": "text-generation-with-past",
         "mistral": "text-generation-with-past", "phi": "text-generation-with-past",
         "bert": "fill-mask", "roberta": "fill-mask", "distilbert": "fill-mask", "xlm-roberta": "fill-mask",
         "albert": "fill-mask", "electra": "fill-mask", "deberta-v2": "fill-mask", "mpnet": "fill-mask",
         "t5": "text2text-generation-with-past", "bart": "text2text-generation-with-past",
         "mobilebert": "fill-mask", "xlm": "fill-mask", "whisper": "automatic-speech-recognition-with-past",
         "esm": "fill-mask"}


def build_checkpoint(architecture: str, directory: Path, seed: int = 0) -> Path:
    """Save a tiny random `architecture` checkpoint (config, safetensors, generation config) to `directory`."""
    import torch
    import transformers

    config_name, model_name, extra = ARCHITECTURES[architecture]
    config = getattr(transformers, config_name)(vocab_size=VOCAB_OF.get(architecture, VOCAB), **extra)
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    model.save_pretrained(directory)
    return directory


def export_checkpoint(architecture: str, directory: Path, task: str | None = None) -> Path:
    """Build the checkpoint and export it with Optimum for its task (default: the one listed in TASKS)."""
    from optimum.exporters.onnx import main_export

    from projclust_onnx.pipeline.compressor import quiet_third_party

    checkpoint = build_checkpoint(architecture, directory / "hf")
    out = directory / "onnx"
    with quiet_third_party():
        main_export(str(checkpoint), output=out, task=task or TASKS[architecture], library_name="transformers",
                    do_validation=False)
    return out


def tiny_tokenizer(directory: Path, vocab_file: Path, size: int = VOCAB) -> None:
    """A WordPiece tokenizer over the first `size` entries of a BERT vocabulary (MiniLM's: specials first)."""
    from transformers import BertTokenizerFast

    vocab = Path(vocab_file).read_text().splitlines()[:size]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(directory / "vocab.txt")).save_pretrained(directory)
