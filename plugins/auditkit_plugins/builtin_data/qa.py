"""Short factual questions with short answers, for generation-based accuracy (``builtin:qa``).

Rows ``{"prompt", "reference", "category"}``: ``prompt`` is a ready prompt ("Question: ...?\\nAnswer:"),
``reference`` one answer or a list of accepted answers (EM/F1 take the best of them, BLEU/chrF use them
all). The content is fixed and written for auditkit; the seed only shuffles the order. Splits:
``#test`` (the default, 56 rows) and ``#train`` (8 rows kept apart for few-shot prompts); ``#all`` both.
"""
from __future__ import annotations

import random

__all__ = ["generate", "ITEMS"]

# (category, question, reference or accepted references)
ITEMS: list[tuple[str, str, str | list[str]]] = [
    ("capitals", "What is the capital of France?", "Paris"),
    ("capitals", "What is the capital of Japan?", "Tokyo"),
    ("capitals", "What is the capital of Italy?", "Rome"),
    ("capitals", "What is the capital of Germany?", "Berlin"),
    ("capitals", "What is the capital of Spain?", "Madrid"),
    ("capitals", "What is the capital of Egypt?", "Cairo"),
    ("capitals", "What is the capital of Canada?", "Ottawa"),
    ("capitals", "What is the capital of Australia?", "Canberra"),
    ("capitals", "What is the capital of Kenya?", "Nairobi"),
    ("capitals", "What is the capital of the United States?", ["Washington, D.C.", "Washington"]),
    ("capitals", "What is the capital of the United Kingdom?", "London"),
    ("capitals", "What is the capital of Greece?", "Athens"),
    ("arithmetic", "What is two plus two?", ["four", "4"]),
    ("arithmetic", "What is three plus five?", ["eight", "8"]),
    ("arithmetic", "What is ten minus four?", ["six", "6"]),
    ("arithmetic", "What is six times seven?", ["forty-two", "42"]),
    ("arithmetic", "What is nine plus one?", ["ten", "10"]),
    ("arithmetic", "What is twelve divided by three?", ["four", "4"]),
    ("arithmetic", "What is five times five?", ["twenty-five", "25"]),
    ("arithmetic", "What is one hundred minus one?", ["ninety-nine", "99"]),
    ("colours", "What colour is the sky on a clear day?", "blue"),
    ("colours", "What colour is grass?", "green"),
    ("colours", "What colour is snow?", "white"),
    ("colours", "What colour is a ripe banana?", "yellow"),
    ("colours", "What colour do you get by mixing blue and yellow?", "green"),
    ("colours", "What colour do you get by mixing red and white?", "pink"),
    ("colours", "What colour is coal?", "black"),
    ("colours", "What colour is a ripe tomato?", "red"),
    ("animals", "What sound does a cow make?", ["moo", "a moo"]),
    ("animals", "What sound does a dog make?", ["woof", "bark", "a bark"]),
    ("animals", "What sound does a cat make?", ["meow", "a meow", "miaow"]),
    ("animals", "How many legs does a spider have?", ["eight", "8", "eight legs"]),
    ("animals", "How many legs does a dog have?", ["four", "4", "four legs"]),
    ("animals", "What is a baby cat called?", ["a kitten", "kitten"]),
    ("animals", "What is a baby dog called?", ["a puppy", "puppy"]),
    ("animals", "Which animal is known as the king of the jungle?", ["the lion", "lion"]),
    ("calendar", "How many days are in a week?", ["seven", "7", "seven days"]),
    ("calendar", "How many months are in a year?", ["twelve", "12", "twelve months"]),
    ("calendar", "What day comes after Monday?", "Tuesday"),
    ("calendar", "What day comes before Sunday?", "Saturday"),
    ("calendar", "What month comes after January?", "February"),
    ("calendar", "What is the last month of the year?", "December"),
    ("calendar", "How many hours are in a day?", ["twenty-four", "24", "24 hours"]),
    ("calendar", "How many minutes are in an hour?", ["sixty", "60", "60 minutes"]),
    ("opposites", "What is the opposite of hot?", "cold"),
    ("opposites", "What is the opposite of up?", "down"),
    ("opposites", "What is the opposite of big?", ["small", "little"]),
    ("opposites", "What is the opposite of day?", "night"),
    ("opposites", "What is the opposite of open?", ["closed", "shut"]),
    ("opposites", "What is the opposite of fast?", "slow"),
    ("opposites", "What is the opposite of happy?", "sad"),
    ("opposites", "What is the opposite of left?", "right"),
    ("science", "What planet do we live on?", ["Earth", "the Earth"]),
    ("science", "What is frozen water called?", "ice"),
    ("science", "What gas do plants take in from the air?", ["carbon dioxide", "CO2"]),
    ("science", "What is the closest star to the Earth?", ["the Sun", "Sun"]),
    ("science", "At what temperature in Celsius does water freeze?", ["zero degrees", "0", "zero"]),
    ("science", "What force pulls objects towards the Earth?", "gravity"),
    ("language", "What is the plural of mouse?", "mice"),
    ("language", "What is the plural of child?", "children"),
    ("language", "What is the plural of foot?", "feet"),
    ("language", "What is the past tense of go?", "went"),
    ("language", "How many letters are in the English alphabet?", ["twenty-six", "26"]),
    ("language", "What is the first letter of the English alphabet?", ["A", "the letter A"]),
]
#: items kept for few-shot prompts (one per category), by question
_TRAIN = {"What is the capital of Greece?", "What is one hundred minus one?", "What colour is a ripe tomato?",
          "Which animal is known as the king of the jungle?", "How many minutes are in an hour?",
          "What is the opposite of left?", "What force pulls objects towards the Earth?",
          "What is the first letter of the English alphabet?"}


def _row(category: str, question: str, reference) -> dict:
    return {"prompt": f"Question: {question}\nAnswer:",
            "reference": list(reference) if isinstance(reference, list) else reference, "category": category}


def generate(seed: int = 0) -> dict[str, list[dict]]:
    """``{"train", "test", "all"}`` rows; the seed only shuffles the order within each split."""
    rng = random.Random(f"qa:{seed}")
    train = [_row(*it) for it in ITEMS if it[1] in _TRAIN]
    test = [_row(*it) for it in ITEMS if it[1] not in _TRAIN]
    rng.shuffle(train)
    rng.shuffle(test)
    return {"train": train, "test": test, "all": train + test}
