"""Tiny random checkpoints of the architectures people bring (issue 11, item 5), built in seconds.

Each is 2 layers of 128 dims with the 2k byte-level BPE of the built-in tiny models, saved with
``save_pretrained`` (safetensors) into a folder, so a suite can name it as ``model.base``.
"""
from __future__ import annotations

from pathlib import Path

ENCODERS = ("bert", "roberta", "distilbert", "electra", "xlnet", "deberta-v2")
DECODERS = ("gpt2", "llama", "qwen2", "mistral")
ENCODER_DECODERS = ("t5", "bart")


def _config(arch: str, tok):
    import transformers as tf
    v, pad, eos = len(tok), tok.pad_token_id, tok.eos_token_id
    common = dict(vocab_size=v, pad_token_id=pad, bos_token_id=tok.bos_token_id, eos_token_id=eos)
    small = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256)
    if arch == "bert":
        return tf.BertConfig(**common, **small, max_position_embeddings=256)
    if arch == "roberta":  # positions start after the padding index
        return tf.RobertaConfig(**common, **small, max_position_embeddings=260)
    if arch == "distilbert":
        return tf.DistilBertConfig(vocab_size=v, pad_token_id=pad, dim=128, n_layers=2, n_heads=2, hidden_dim=256,
                                   max_position_embeddings=256)
    if arch == "electra":
        return tf.ElectraConfig(**common, **small, embedding_size=128, max_position_embeddings=256)
    if arch == "xlnet":
        return tf.XLNetConfig(**common, d_model=128, n_layer=2, n_head=2, d_inner=256)
    if arch == "deberta-v2":
        return tf.DebertaV2Config(**common, **small, max_position_embeddings=256)
    if arch == "gpt2":
        return tf.GPT2Config(**common, n_embd=128, n_layer=2, n_head=2, n_positions=256)
    if arch == "llama":
        return tf.LlamaConfig(**common, **small, num_key_value_heads=2, max_position_embeddings=256)
    if arch == "qwen2":
        return tf.Qwen2Config(**common, **small, num_key_value_heads=1, max_position_embeddings=256)
    if arch == "mistral":
        return tf.MistralConfig(**common, **small, num_key_value_heads=1, max_position_embeddings=256)
    if arch == "t5":
        return tf.T5Config(vocab_size=v, pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad, d_model=128,
                           d_ff=256, d_kv=64, num_layers=2, num_heads=2)
    if arch == "bart":
        return tf.BartConfig(**common, d_model=128, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                             decoder_attention_heads=2, encoder_ffn_dim=256, decoder_ffn_dim=256,
                             max_position_embeddings=256, decoder_start_token_id=eos, forced_eos_token_id=eos)
    raise ValueError(arch)


def build(arch: str, folder: Path, task: str | None = None) -> Path:
    """Save a tiny random ``arch`` for ``task`` (default: classifier for encoders, LM otherwise) in ``folder``."""
    import torch
    import transformers as tf
    from auditkit_plugins.builtin_models import _bpe_tokenizer

    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    task = task or ("sequence-classification" if arch in ENCODERS else
                    "causal-lm" if arch in DECODERS else "seq2seq-lm")
    tok = _bpe_tokenizer()
    cfg = _config(arch, tok)
    torch.manual_seed(0)
    auto = {"sequence-classification": tf.AutoModelForSequenceClassification, "causal-lm": tf.AutoModelForCausalLM,
            "seq2seq-lm": tf.AutoModelForSeq2SeqLM}[task]
    if task == "sequence-classification":
        cfg.num_labels = 2
    model = auto.from_config(cfg)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder
