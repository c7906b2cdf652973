"""Built-in dataset sources (``builtin:NAME[#split]``), generated deterministically from the seed.

Without ``#split`` a split dataset gives its train split.
"""
from __future__ import annotations

from functools import lru_cache

from auditkit.hookspecs import hookimpl


@lru_cache(maxsize=8)
def _reviews(seed: int) -> dict:
    from auditkit_plugins.builtin_data import reviews
    return reviews.generate(seed)


def reviews(split: str | None, seed: int) -> list[dict]:
    return _reviews(seed)[split or "train"]


def _unsplit(fn_name: str, module: str):
    def load(split: str | None, seed: int) -> list[dict]:
        import importlib
        mod = importlib.import_module(f"auditkit_plugins.builtin_data.{module}")
        rows = getattr(mod, fn_name)(seed) if fn_name != "load" else mod.load()
        if split not in (None, "test", "all"):
            raise KeyError(split)
        return rows
    return load


@lru_cache(maxsize=8)
def _qa(seed: int) -> dict:
    from auditkit_plugins.builtin_data import qa
    return qa.generate(seed)


def qa(split: str | None, seed: int) -> list[dict]:
    """Short factual QA for generation: ``#test`` (the default), ``#train`` (few-shot examples), ``#all``."""
    return _qa(seed)[split or "test"]


@hookimpl
def auditkit_register_dataset_sources(register):
    register("reviews", reviews, "short product/service reviews {text,label,group}; #train #validation #test")
    register("mc-general", _unsplit("generate", "multiple_choice"),
             "general-knowledge multiple choice {question,choices,label}")
    register("general-text", _unsplit("general_text", "retention"), "general-domain text {text} (retention)")
    register("neutral-prompts", _unsplit("neutral_prompts", "retention"), "neutral prompt prefixes {text}")
    register("sentence-pairs", _unsplit("sentence_pairs", "retention"),
             "neutral sentence pairs {text_a,text_b,similarity}")
    register("stereotype-pairs", _unsplit("load", "stereotype_pairs"),
             "CrowS-Pairs-format pairs {sent_more,sent_less,stereo_antistereo,bias_type}")
    register("qa", qa, "short factual questions for generation {prompt,reference,category}; #test (default) "
             "#train (few-shot examples) #all")
