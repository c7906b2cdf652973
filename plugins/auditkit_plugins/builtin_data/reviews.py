"""Synthetic product and service reviews with a demographic group mentioned in each text.

``generate(seed, n, group_label_correlation)`` returns train/validation/test splits (70/15/15) of
rows ``{"text", "label", "group"}`` (label 0 = negative, 1 = positive). Every text names its
group through one of the surface terms in ``GROUP_TERMS`` as a whole word. With
``group_label_correlation = 0`` labels are balanced within every group; with ``c`` in (0, 1] the
groups in ``FAVOURED_GROUPS`` get a positive share of ``0.5 + c/2`` and the others ``0.5 - c/2``
(exact shares, rounded per group), which plants a controllable group/label shortcut for bias
checks. All choices come from ``random.Random(seed)``; the same seed gives identical output.
"""

from __future__ import annotations

import random
import re

__all__ = ["GROUP_TERMS", "FAVOURED_GROUPS", "GROUP_ATTRIBUTE", "generate"]

# Group -> surface terms. Each term occurs as a whole word in the texts of its group only.
GROUP_TERMS: dict[str, list[str]] = {
    "woman": ["woman", "mother", "sister", "wife", "daughter"],
    "man": ["man", "father", "brother", "husband", "son"],
    "young": ["young", "teenager", "student", "youngster"],
    "elderly": ["elderly", "retiree", "pensioner", "senior"],
    "christian": ["Christian", "Catholic", "Protestant"],
    "muslim": ["Muslim", "Sunni", "Shia"],
}

# Which attribute each group belongs to (useful for per-attribute reporting).
GROUP_ATTRIBUTE: dict[str, str] = {
    "woman": "gender", "man": "gender",
    "young": "age", "elderly": "age",
    "christian": "religion", "muslim": "religion",
}

# One group per attribute is "favoured" when a group/label correlation is requested.
FAVOURED_GROUPS: tuple[str, ...] = ("man", "young", "christian")

# Openers per surface term; each is followed by a past-tense verb phrase ("... I bought").
_OPENERS: dict[str, list[str]] = {
    "woman": ["As a woman, I", "Speaking as a woman, I", "As a working woman, I"],
    "mother": ["As a busy mother, I", "My mother", "My mother and I"],
    "sister": ["My sister", "My sister and I"],
    "wife": ["My wife", "My wife and I"],
    "daughter": ["My daughter", "My daughter and I"],
    "man": ["As a man, I", "Speaking as a man, I", "As a working man, I"],
    "father": ["As a busy father, I", "My father", "My father and I"],
    "brother": ["My brother", "My brother and I"],
    "husband": ["My husband", "My husband and I"],
    "son": ["My son", "My son and I"],
    "young": ["As a young customer, I", "As a young person on a budget, I"],
    "teenager": ["As a teenager, I", "Being a teenager, I"],
    "student": ["As a student, I", "As a college student, I"],
    "youngster": ["As a youngster, I"],
    "elderly": ["As an elderly customer, I", "As an elderly person, I"],
    "retiree": ["As a retiree, I", "Being a retiree, I"],
    "pensioner": ["As a pensioner, I", "As a pensioner on a budget, I"],
    "senior": ["As a senior, I", "As a senior customer, I"],
    "Christian": ["As a Christian, I", "As a Christian customer, I"],
    "Catholic": ["As a Catholic, I", "As a practising Catholic, I"],
    "Protestant": ["As a Protestant, I"],
    "Muslim": ["As a Muslim, I", "As a Muslim customer, I"],
    "Sunni": ["As a Sunni Muslim, I", "As a Sunni, I"],
    "Shia": ["As a Shia Muslim, I", "As a Shia, I"],
}

# Things being reviewed, by kind: (name, kind). Kinds decide verbs and detail phrases.
_ITEMS: list[tuple[str, str]] = [
    (name, "product") for name in (
        "blender", "toaster", "pair of headphones", "laptop", "vacuum cleaner", "coffee maker",
        "backpack", "phone case", "desk lamp", "pair of running shoes", "kettle", "microwave",
        "air fryer", "electric toothbrush", "smartwatch", "mattress", "umbrella", "printer",
        "keyboard", "bluetooth speaker", "rice cooker", "winter jacket", "office chair",
        "hair dryer", "tablet", "camera", "frying pan", "water bottle", "e-reader", "bicycle",
    )
] + [
    (name, "place") for name in (
        "hotel", "restaurant", "gym", "hair salon", "bakery", "dentist", "pharmacy",
        "coffee shop", "car wash", "cinema", "bookshop", "pizza place", "hostel", "spa",
        "garden centre", "sushi bar", "museum cafe", "bike shop", "farmers market stall",
        "bed and breakfast",
    )
] + [
    (name, "service") for name in (
        "plumber", "electrician", "moving company", "cleaning service", "taxi service",
        "car rental company", "airline", "delivery service", "tutoring service",
        "dog walking service", "painter", "locksmith", "catering company", "internet provider",
        "laundry service", "gardener", "roofing company", "courier", "travel agency",
        "photographer",
    )
] + [
    (name, "app") for name in (
        "mobile app", "banking app", "streaming service", "fitness app", "weather app",
        "language learning app", "food delivery app", "photo editing app", "music app",
        "budgeting app", "navigation app", "recipe app",
    )
]

_VERBS: dict[str, list[str]] = {
    "product": ["bought", "ordered", "tried", "picked up", "received"],
    "place": ["visited", "went to", "tried", "stopped by"],
    "service": ["hired", "used", "booked", "tried"],
    "app": ["downloaded", "used", "tried", "subscribed to"],
}

_TIMES = ["last week", "last month", "a few days ago", "recently", "over the weekend",
          "two weeks ago", "last spring", "yesterday"]

_POS_ADJ = ["excellent", "fantastic", "wonderful", "great", "superb", "outstanding",
            "impressive", "brilliant", "terrific", "delightful", "first-rate", "amazing"]
_NEG_ADJ = ["terrible", "awful", "disappointing", "dreadful", "poor", "useless", "horrible",
            "frustrating", "unreliable", "shoddy", "miserable", "appalling"]

_POS_VERDICT = [
    "I would happily recommend it", "it exceeded my expectations", "it was worth every penny",
    "I will definitely come back to it", "I have no complaints at all", "five stars from me",
    "I am very satisfied", "I could not be happier", "it made my week",
    "I would gladly pay for it again", "it was a real pleasure", "I loved every minute of it",
]
_NEG_VERDICT = [
    "I would not recommend it to anyone", "it was a complete waste of money",
    "I will never use it again", "I regret paying for it", "I want my money back",
    "one star is too generous", "I am very disappointed", "it ruined my week",
    "I am still annoyed about it", "avoid it if you can", "it was a total letdown",
    "I wish I had gone elsewhere",
]
# Sparse negation, still clearly polar.
_POS_NEGATED = ["it was not bad at all", "I have nothing bad to say about it",
                "I did not regret it for a second"]
_NEG_NEGATED = ["it was not worth the money", "it was not good at all",
                "I cannot recommend it"]

_POS_DETAIL: dict[str, list[str]] = {
    "product": ["it feels solid and well made", "it works exactly as described",
                "setup took two minutes", "it still works perfectly", "the quality is superb",
                "it arrived early and in perfect condition"],
    "place": ["the staff were friendly and helpful", "the place was spotless",
              "the service was quick and warm", "everything was clean and comfortable",
              "the prices were fair and the quality high"],
    "service": ["they arrived on time and did a careful job", "the price was fair and clear",
                "they were polite and professional", "everything was done quickly and well",
                "they answered every question patiently"],
    "app": ["it is fast and easy to use", "it never crashes",
            "the design is clean and simple", "every feature works smoothly",
            "support answered within minutes"],
}
_NEG_DETAIL: dict[str, list[str]] = {
    "product": ["it broke after a week", "it feels cheap and flimsy",
                "it stopped working within days", "half the parts were missing",
                "it overheats and makes a horrible noise", "it arrived damaged"],
    "place": ["the staff were rude and careless", "the place was dirty",
              "we waited forever for nothing", "the prices were outrageous for the quality",
              "the whole place smelled awful"],
    "service": ["they showed up late and did sloppy work", "they overcharged me badly",
                "they were rude and unhelpful", "the job had to be redone",
                "they never answered my calls"],
    "app": ["it crashes constantly", "it is slow and confusing",
            "it drains my battery and freezes", "half the features are broken",
            "support never replied"],
}

_TEMPLATES = [
    "{O} {V} the {I} {T}, and it was {A}; {C}.",
    "{O} {V} the {I} {T}. Honestly, {D}, and {C}.",
    "{O} found the {I} {A}. {Dc}.",
    "{O} {V} this {I} {T}: {A}, and {D}.",
    "{O} {V} the {I} {T}. {Cc}, because {D}.",
    "{O} would describe the {I} as {A}. {Cc}.",
    "{O} {V} the {I}, and {D}. Overall {A}.",
    "{O} {V} the {I} {T}. {Dc}, so {C}.",
]
# Mixed reviews: a concession in the opposite direction, then a clear overall verdict.
_MIXED_TEMPLATES = [
    "{O} {V} the {I} {T}. Although {Do}, overall it was {A} and {C}.",
    "{O} {V} the {I}. {Doc}, but in the end {C}.",
]

_WORD_MIN, _WORD_MAX = 8, 25


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _compose(rng: random.Random, group: str, label: int) -> str:
    term = rng.choice(GROUP_TERMS[group])
    opener = rng.choice(_OPENERS[term])
    item, kind = rng.choice(_ITEMS)
    pos = label == 1
    adj = rng.choice(_POS_ADJ if pos else _NEG_ADJ)
    if rng.random() < 0.08:
        verdict = rng.choice(_POS_NEGATED if pos else _NEG_NEGATED)
    else:
        verdict = rng.choice(_POS_VERDICT if pos else _NEG_VERDICT)
    detail = rng.choice((_POS_DETAIL if pos else _NEG_DETAIL)[kind])
    other = rng.choice((_NEG_DETAIL if pos else _POS_DETAIL)[kind])
    template = rng.choice(_MIXED_TEMPLATES if rng.random() < 0.1 else _TEMPLATES)
    return template.format(
        O=opener, V=rng.choice(_VERBS[kind]), I=item, T=rng.choice(_TIMES), A=adj,
        C=verdict, Cc=_cap(verdict), D=detail, Dc=_cap(detail), Do=other, Doc=_cap(other),
    )


def _term_pattern(group: str) -> re.Pattern[str]:
    alts = "|".join(re.escape(t) for t in GROUP_TERMS[group])
    return re.compile(rf"\b(?:{alts})\b", re.IGNORECASE)


def generate(seed: int = 0, n: int = 2400,
             group_label_correlation: float = 0.0) -> dict[str, list[dict]]:
    """Return {"train", "validation", "test"} lists of {"text", "label", "group"} rows (70/15/15,
    stratified by group and label)."""
    if n < 20:
        raise ValueError(f"reviews: n must be at least 20, got {n}")
    c = float(group_label_correlation)
    if not 0.0 <= c <= 1.0:
        raise ValueError(f"reviews: group_label_correlation must be in [0, 1], got {c}")
    rng = random.Random(seed)
    groups = list(GROUP_TERMS)
    # Balanced group sizes (the first n % len(groups) groups get one more row).
    sizes = {g: n // len(groups) + (1 if i < n % len(groups) else 0)
             for i, g in enumerate(groups)}
    rows: list[dict] = []
    seen: set[str] = set()
    for g in groups:
        p_pos = 0.5 + c / 2 if g in FAVOURED_GROUPS else 0.5 - c / 2
        n_pos = int(round(sizes[g] * p_pos))
        labels = [1] * n_pos + [0] * (sizes[g] - n_pos)
        rng.shuffle(labels)
        for label in labels:
            for _attempt in range(50):
                text = _compose(rng, g, label)
                words = len(text.split())
                if _WORD_MIN <= words <= _WORD_MAX and text not in seen:
                    break
            seen.add(text)
            rows.append({"text": text, "label": label, "group": g})
    # Stratified by (group, label): every split keeps each group's label balance, so a perfect
    # classifier shows no demographic-parity gap on the test split that the data itself put there.
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for g in groups:
        for label in (1, 0):
            cell = [r for r in rows if r["group"] == g and r["label"] == label]
            rng.shuffle(cell)
            n_train, n_val = int(round(len(cell) * 0.70)), int(round(len(cell) * 0.15))
            splits["train"] += cell[:n_train]
            splits["validation"] += cell[n_train:n_train + n_val]
            splits["test"] += cell[n_train + n_val:]
    for part in splits.values():
        rng.shuffle(part)
    return splits
