"""Group-term lexicons for counterfactual swaps (gender, race_ethnicity, religion, age, ...).

Structure of ``lexicons.json`` (and of any user file passed to ``load``)::

    {"ATTRIBUTE": {"groups": {"GROUP": {"nouns": [str, ...], "names": [str, ...]}},
                   "swaps": [[term_of_one_group, term_of_another_group], ...]}}

Terms are whole words (a hyphenated word counts as one word); common words are lowercase, proper
nouns and first names keep their usual capitals. Matching should be case-insensitive and whole
word, with the case pattern of the matched text restored by the caller. Each swap pair names two
terms of two different groups of the same attribute. Some terms occur in more than one pair (for
example "her" pairs with both "his" and "him"); a caller swapping in the reverse direction
should take the first pair that matches.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["ATTRIBUTES", "load", "validate"]

ATTRIBUTES = ("gender", "race_ethnicity", "religion", "age", "nationality", "disability")
_FILE = "lexicons.json"


def _where(source: str, *keys: object) -> str:
    path = "".join(f"[{k!r}]" for k in keys)
    return f"{source}{path}"


def _str_list(value: Any, source: str, *keys: object) -> list[str]:
    if not isinstance(value, list):
        raise ValueError(f"{_where(source, *keys)}: expected a list of words, "
                         f"got {type(value).__name__}")
    for i, word in enumerate(value):
        if not isinstance(word, str) or not word.strip() or word != word.strip():
            raise ValueError(f"{_where(source, *keys, i)}: expected a non-empty word without "
                             f"surrounding spaces, got {word!r}")
        if any(ch.isspace() for ch in word):
            raise ValueError(f"{_where(source, *keys, i)}: {word!r} is not a single word; "
                             "use whole words only (hyphens are fine)")
    return value


def validate(data: Any, source: str = "lexicons") -> dict:
    """Check the lexicon structure; return ``data`` unchanged or raise ValueError naming the place."""
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{source}: expected a non-empty object mapping attribute names to "
                         '{"groups": {...}, "swaps": [...]}')
    for attr, spec in data.items():
        if not isinstance(spec, dict):
            raise ValueError(f"{_where(source, attr)}: expected an object with keys "
                             f"'groups' and 'swaps', got {type(spec).__name__}")
        unknown = sorted(set(spec) - {"groups", "swaps"})
        missing = sorted({"groups", "swaps"} - set(spec))
        if missing or unknown:
            raise ValueError(f"{_where(source, attr)}: expected keys 'groups' and 'swaps'"
                             + (f"; missing {missing}" if missing else "")
                             + (f"; unknown {unknown}" if unknown else ""))
        groups = spec["groups"]
        if not isinstance(groups, dict) or len(groups) < 2:
            raise ValueError(f"{_where(source, attr, 'groups')}: expected an object with at "
                             "least two groups")
        owner: dict[str, str] = {}
        for group, terms in groups.items():
            if not isinstance(terms, dict) or set(terms) - {"nouns", "names"} or not terms:
                raise ValueError(f"{_where(source, attr, 'groups', group)}: expected an object "
                                 'with keys "nouns" and/or "names" (lists of words)')
            for kind in ("nouns", "names"):
                for word in _str_list(terms.get(kind, []), source, attr, "groups", group, kind):
                    other = owner.setdefault(word.lower(), group)
                    if other != group:
                        raise ValueError(f"{_where(source, attr, 'groups', group, kind)}: "
                                         f"{word!r} is also listed under group {other!r}")
        swaps = spec["swaps"]
        if not isinstance(swaps, list) or not swaps:
            raise ValueError(f"{_where(source, attr, 'swaps')}: expected a non-empty list of "
                             "[word, word] pairs")
        for i, pair in enumerate(swaps):
            if not isinstance(pair, list) or len(pair) != 2:
                raise ValueError(f"{_where(source, attr, 'swaps', i)}: expected a pair "
                                 f"[word, word], got {pair!r}")
            a, b = _str_list(pair, source, attr, "swaps", i)
            ga, gb = owner.get(a.lower()), owner.get(b.lower())
            for word, g in ((a, ga), (b, gb)):
                if g is None:
                    raise ValueError(f"{_where(source, attr, 'swaps', i)}: {word!r} is not "
                                     f"listed in any group of {attr!r}; add it to a group's "
                                     '"nouns" or "names"')
            if ga == gb:
                raise ValueError(f"{_where(source, attr, 'swaps', i)}: {a!r} and {b!r} both "
                                 f"belong to group {ga!r}; a swap must cross two groups")
    return data


def load(path: str | None = None) -> dict:
    """Load the built-in lexicons (path=None) or a user JSON file with the same structure."""
    if path is None:
        if __package__:
            text = resources.files(__package__).joinpath(_FILE).read_text(encoding="utf-8")
        else:  # loaded by path, outside its package
            text = Path(__file__).with_name(_FILE).read_text(encoding="utf-8")
        source = f"builtin {_FILE}"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"{path}: cannot read lexicon file ({exc.strerror or exc})") from None
        source = str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg})") from None
    return validate(data, source)
