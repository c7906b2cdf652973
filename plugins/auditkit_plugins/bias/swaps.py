"""Group-term substitution for counterfactual fairness (Garg et al. 2019, "Counterfactual Fairness in
Text Classification through Robustness": a counterfactual of ``x`` swaps its identity terms for the
terms of another group and leaves every other word alone).

Rules implemented here, on the lexicon structure of ``builtin_data/lexicons.py``:

- whole words only: a term matches when it is not preceded or followed by a letter, digit, ``_`` or
  ``-`` (a hyphenated word is one word, so "dyslexic" never matches inside "non-dyslexic");
- case-insensitive matching for nouns; first names match only when written with a capital;
- case is kept: ``he -> she``, ``He -> She``, ``HE -> SHE``; a lowercase match takes the lexicon's
  own spelling of the target (so "christian" becomes "Muslim", a proper noun);
- a swap (attribute, source group, target group) *exchanges* the two groups: every source term with a
  pair into the target group becomes its partner and every target term with a pair back becomes its
  partner ("he told her" -> "she told him"); other groups are left alone;
- when a term has several partners in the target group the lexicon's first pair wins, except for the
  English pronouns: "her" becomes "his" before a noun and "him" otherwise, "his" becomes "hers" at
  the end of a clause and "her" otherwise;
- words that are colours or everyday adjectives as often as group terms ("black", "white", "old",
  "hearing", ...: ``CONTEXT_TERMS``) count as group terms only right before a person noun
  ("a black woman", not "a black phone");
- "a"/"an" right before a swapped word is re-agreed with the new word;
- a counterfactual is never the original sentence (every swap changes at least one word).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from auditkit.errors import AuditInputError

#: terms that are group terms only before a person noun (colours, everyday adjectives, nouns)
CONTEXT_TERMS = ("black", "white", "old", "older", "oldest", "aged", "hearing", "blind")

PERSON_NOUNS = frozenset("""
man men woman women person people guy guys girl girls boy boys lady ladies gentleman gentlemen kid kids
child children family families customer customers neighbour neighbours neighbor neighbors friend friends
student students worker workers patient patients driver drivers couple couples parent parents mother
mothers father fathers son sons daughter daughters wife husband colleague colleagues community
communities employee employees applicant applicants candidate candidates resident residents citizen
citizens teenager teenagers voter voters owner owners teacher teachers doctor doctors nurse nurses
officer officers individual individuals folks folk americans man's woman's
""".split())

# words after "her" that show it is an object pronoun ("I gave her the book", "told her to go")
_NOT_A_NOUN = frozenset("""
to and or but at in on for with from about that the a an this these those as again back up down out
off away home too so if when because yesterday today tomorrow later now into over by after before
since there here all very well once twice soon first last what how why where who which not never
""".split())

_VOWEL_EXCEPTIONS = ("eu", "uni", "use", "usu", "one", "once", "ukr")
_SILENT_H = ("hour", "honest", "honour", "honor", "heir")


def match_case(source: str, target: str) -> str:
    """``target`` written with the case pattern of ``source`` (ALL CAPS, Capitalised, or as given)."""
    if len(source) > 1 and source.isupper():
        return target.upper()
    if source[:1].isupper():
        return target[:1].upper() + target[1:]
    return target


def _article_for(word: str) -> str:
    w = word.lower()
    if w.startswith(_SILENT_H) or (w[:1] in "aeiou" and not w.startswith(_VOWEL_EXCEPTIONS)):
        return "an"
    return "a"


@dataclass(frozen=True)
class Counterfactual:
    """One counterfactual of a text: the new text, which swap made it and what changed."""

    text: str
    attribute: str
    source: str  # the group the original text mentions
    target: str  # the group it mentions after the swap
    changes: tuple  # ((original word, new word), ...)
    end: int  # offset in the ORIGINAL text just after the last swapped word


@dataclass(frozen=True)
class _Match:
    start: int
    end: int
    word: str
    group: str
    next_word: str | None


class Swapper:
    """Finds group terms of a validated lexicon in texts and writes their counterfactuals."""

    def __init__(self, lexicon: dict, context_terms=CONTEXT_TERMS, attributes=None):
        self.lexicon = lexicon
        self.context_terms = {t.lower() for t in context_terms}
        self.attributes = [a for a in lexicon if attributes is None or a in attributes]
        self._owner: dict[str, dict[str, str]] = {}      # attr -> term(lower) -> group
        self._names: dict[str, set[str]] = {}            # attr -> first names (lower)
        self._partners: dict[str, dict[str, dict[str, list[str]]]] = {}  # attr -> term -> group -> [terms]
        self._pattern: dict[str, re.Pattern] = {}
        for attr in self.attributes:
            spec = lexicon[attr]
            owner, names = {}, set()
            for group, terms in spec["groups"].items():
                for w in terms.get("nouns", []):
                    owner[w.lower()] = group
                for w in terms.get("names", []):
                    owner[w.lower()] = group
                    names.add(w.lower())
            partners: dict[str, dict[str, list[str]]] = {}
            for a, b in spec["swaps"]:
                for x, y in ((a, b), (b, a)):
                    lst = partners.setdefault(x.lower(), {}).setdefault(owner[y.lower()], [])
                    if y not in lst:
                        lst.append(y)
            self._owner[attr], self._names[attr], self._partners[attr] = owner, names, partners
            words = sorted(owner, key=lambda w: (-len(w), w))
            alts = "|".join(re.escape(w) for w in words)
            # group 1: the term; group 2: the next word, if any (for context rules)
            self._pattern[attr] = re.compile(rf"(?<![\w-])({alts})(?![\w-])(?=(?:\s+([\w'-]+))?)", re.IGNORECASE)

    @property
    def groups(self) -> dict[str, list[str]]:
        return {a: list(self.lexicon[a]["groups"]) for a in self.attributes}

    # ------------------------------------------------------------------ matching
    def _matches(self, attr: str, text: str) -> list[_Match]:
        out = []
        owner, names = self._owner[attr], self._names[attr]
        for m in self._pattern[attr].finditer(text):
            word, nxt = m.group(1), m.group(2)
            low = word.lower()
            if low in names and not word[:1].isupper():
                continue  # "mark my words" is not Mark
            if low in self.context_terms and (nxt is None or nxt.lower() not in PERSON_NOUNS):
                continue  # "a black phone"
            out.append(_Match(m.start(1), m.end(1), word, owner[low], nxt))
        return out

    def groups_in(self, text: str) -> dict[str, set[str]]:
        """{attribute: groups whose terms occur in ``text``} (attributes with no match left out)."""
        found = {}
        for attr in self.attributes:
            gs = {m.group for m in self._matches(attr, text)}
            if gs:
                found[attr] = gs
        return found

    # ------------------------------------------------------------------ swapping
    @staticmethod
    def _choose(word: str, candidates: list[str], next_word: str | None) -> str:
        low = word.lower()
        cands = [c.lower() for c in candidates]
        if low == "her" and "his" in cands and "him" in cands:
            possessive = next_word is not None and next_word.lower() not in _NOT_A_NOUN
            return candidates[cands.index("his" if possessive else "him")]
        if low == "his" and "her" in cands and "hers" in cands:
            return candidates[cands.index("hers" if next_word is None else "her")]
        return candidates[0]

    def _apply(self, attr: str, text: str, matches: list[_Match], source: str, target: str):
        partners = self._partners[attr]
        edits = []
        for m in matches:
            other = target if m.group == source else source if m.group == target else None
            cands = partners.get(m.word.lower(), {}).get(other) if other else None
            if cands:
                new = match_case(m.word, self._choose(m.word, cands, m.next_word))
                edits.append((m.start, m.end, m.word, new, m.group == source))
        if not any(e[4] for e in edits):
            return None
        pieces, pos = [], 0
        for start, end, old, new, _ in edits:
            before = text[pos:start]
            art = re.search(r"(?<![\w-])(an?)(\s+)$", before, re.IGNORECASE)
            if art:
                want = match_case(art.group(1), _article_for(new))
                before = before[:art.start(1)] + want + art.group(2)
            pieces += [before, new]
            pos = end
        pieces.append(text[pos:])
        new_text = "".join(pieces)
        if new_text == text:
            return None
        return Counterfactual(new_text, attr, source, target, tuple((e[2], e[3]) for e in edits), edits[-1][1])

    def counterfactuals(self, text: str) -> list[Counterfactual]:
        """Every distinct counterfactual of ``text`` over the attributes, never ``text`` itself."""
        out: list[Counterfactual] = []
        for attr in self.attributes:
            matches = self._matches(attr, text)
            if not matches:
                continue
            partners = self._partners[attr]
            seen = {text}
            for source in dict.fromkeys(m.group for m in matches):
                targets = dict.fromkeys(g for m in matches if m.group == source
                                        for g in partners.get(m.word.lower(), {}))
                for target in targets:
                    cf = self._apply(attr, text, matches, source, target)
                    if cf is not None and cf.text not in seen:
                        seen.add(cf.text)
                        out.append(cf)
        return out


# ---------------------------------------------------------------------- lexicon loading

def _merge(base: dict, extra: dict) -> dict:
    """The built-in lexicon extended by a user file: groups' term lists and swap lists are joined."""
    out = {a: {"groups": {g: {k: list(v) for k, v in t.items()} for g, t in s["groups"].items()},
               "swaps": [list(p) for p in s["swaps"]]} for a, s in base.items()}
    for attr, spec in extra.items():
        if attr not in out:
            out[attr] = spec
            continue
        for group, terms in spec["groups"].items():
            tgt = out[attr]["groups"].setdefault(group, {})
            for kind, words in terms.items():
                lst = tgt.setdefault(kind, [])
                lst += [w for w in words if w not in lst]
        out[attr]["swaps"] += [p for p in spec["swaps"] if p not in out[attr]["swaps"]]
    return out


def load_lexicon(path: str = "", extend: bool = False, base_dir: str | None = None,
                 place: str = "lexicon") -> dict:
    """The built-in lexicons, or a user JSON file replacing (or with ``extend``, extending) them.

    The file is checked with ``builtin_data.lexicons.validate``; a problem is an AuditInputError whose
    message names the file and the place inside it, and whose ``place`` is the check parameter
    (``lexicon``, or ``CHECK_ID.lexicon`` at run time) so the suite line that set it is named.
    """
    from auditkit_plugins.builtin_data import lexicons
    if not path:
        return lexicons.load()
    p = Path(path).expanduser()
    if not p.is_absolute() and base_dir:
        p = Path(base_dir) / p
    fix = ('write {"ATTRIBUTE": {"groups": {"GROUP": {"nouns": [...], "names": [...]}}, '
           '"swaps": [[word, word], ...]}} (see auditkit_plugins/builtin_data/lexicons.json)')
    try:
        data = lexicons.load(str(p))
        if extend:
            data = lexicons.validate(_merge(lexicons.load(), data), f"{path} + built-in lexicons")
    except ValueError as exc:
        raise AuditInputError(f"bad lexicon file: {exc}", place=place, fix=fix) from None
    return data


def check_names(names, known, place: str, what: str = "attribute") -> None:
    """Raise an AuditInputError (with a did-you-mean) for the first of ``names`` not in ``known``."""
    from auditkit.api import did_you_mean
    for name in names:
        if name not in known:
            raise AuditInputError(f"unknown {what} {name!r}: the lexicon has {', '.join(map(str, known))}",
                                  place=place, fix=did_you_mean(name, list(known)))


def make_swapper(params: dict, base_dir: str | None = None, prefix: str = "") -> Swapper:
    """A Swapper from a check's ``lexicon``, ``extend_lexicon``, ``attributes`` and ``context_terms`` params.

    Errors are AuditInputErrors placed at ``PREFIX + param name`` (``prefix`` = ``"CHECK_ID."`` at run time).
    """
    lex = load_lexicon(params.get("lexicon") or "", bool(params.get("extend_lexicon")), base_dir,
                       place=f"{prefix}lexicon")
    attrs = params.get("attributes") or None
    if attrs:
        check_names(attrs, list(lex), f"{prefix}attributes")
    ctx_terms = params.get("context_terms")
    if ctx_terms is not None:
        bad = [t for t in ctx_terms if not isinstance(t, str) or not t.strip()]
        if bad:
            raise AuditInputError(f"context_terms must be words, got {bad[0]!r}", place=f"{prefix}context_terms",
                                  fix="list words such as black, white, old")
    return Swapper(lex, CONTEXT_TERMS if ctx_terms is None else ctx_terms, attrs)


def swapper_for(params: dict, base_dir: str | None) -> Swapper | None:
    """:func:`make_swapper` for a check's pre-load data check (``Check.validate_data``), or None where that
    cannot be done as the run does it: a relative ``lexicon`` path with the suite's folder unknown, or a
    lexicon that does not load (``validate_params`` at suite load and the run report that, placed at the
    parameter)."""
    lexicon = params.get("lexicon") or ""
    if lexicon and base_dir is None and not Path(lexicon).expanduser().is_absolute():
        return None
    try:
        return make_swapper(params, base_dir)
    except AuditInputError:
        return None
