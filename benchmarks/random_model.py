"""A model with a real architecture and random weights, for speed and memory figures where weights cannot travel.

Compute and memory of a forward, backward or generation step do not depend on the weights' values, so a
seeded random initialisation of a published shape measures what the trained model would cost (accuracy
figures from it mean nothing, and the benchmarks that use it say so). The tokenizer is copied from
``--tokenizer`` (a folder or ``builtin:NAME``).

    python benchmarks/random_model.py --shape smollm2-1.7b --tokenizer builtin:smollm2-135m --out /tmp/m17
    python benchmarks/random_model.py --like builtin:minilm --out /tmp/minilm-random

``--shape`` names a preset below; ``--like`` copies the config of a model folder or built-in.
"""
from __future__ import annotations

import argparse

import _common  # noqa: F401  (offline env)

#: published shapes (config.json of the hub models), Llama-architecture causal LMs
SHAPES = {
    # HuggingFaceTB/SmolLM2-1.7B: 1.71B parameters
    "smollm2-1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                         num_key_value_heads=32, max_position_embeddings=8192, rope_theta=130000.0,
                         tie_word_embeddings=True, rms_norm_eps=1e-5),
    # HuggingFaceTB/SmolLM2-135M: 135M parameters
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0,
                         tie_word_embeddings=True, rms_norm_eps=1e-5),
}


def resolve(spec: str) -> str:
    if spec.startswith("builtin:"):
        from auditkit.models import resolve_source
        from auditkit.plugins import registry
        return resolve_source(spec, registry())
    return spec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--shape", choices=sorted(SHAPES))
    g.add_argument("--like", help="copy the architecture of this model folder or builtin:NAME")
    ap.add_argument("--tokenizer", help="folder or builtin:NAME (default: --like's)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="where to draw the weights (cuda: seconds for 1B+)")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tok_src = resolve(args.tokenizer or args.like)
    tok = AutoTokenizer.from_pretrained(tok_src)
    if args.shape:
        cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id, **SHAPES[args.shape])
        cls = AutoModelForCausalLM
    else:
        cfg = AutoConfig.from_pretrained(resolve(args.like))
        cls = AutoModelForCausalLM if any(a.endswith("ForCausalLM") for a in (cfg.architectures or [])) else AutoModel
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        model = cls.from_config(cfg, dtype=torch.bfloat16 if args.shape else torch.float32)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(args.out, safe_serialization=True)
    tok.save_pretrained(args.out)
    print(f"{args.out}: {type(model).__name__}, {n / 1e6:.1f}M parameters, random weights (seed {args.seed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
