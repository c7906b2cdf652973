"""Easy general-knowledge multiple-choice items (4 short choices) for small instruct LMs.

``generate(seed)`` returns rows ``{"question", "choices", "label", "category"}`` where ``question``
is a ready prompt ("Question: ...?\\nAnswer:") and ``choices[label]`` is the correct answer. The
item content (questions and distractors) is fixed; the seed only shuffles the item order and the
position of the correct answer, which is balanced over the four positions (counts differ by at
most one). Categories: capitals, colours, arithmetic, opposites, animal sounds, calendar order and
counting facts, plurals.
"""

from __future__ import annotations

import random

__all__ = ["generate"]

# (country as written in the question, capital, optional hand-picked distractors)
_CAPITALS: list[tuple[str, str, tuple[str, ...]]] = [
    ("France", "Paris", ()), ("Germany", "Berlin", ()), ("Italy", "Rome", ()),
    ("Spain", "Madrid", ()), ("Japan", "Tokyo", ()),
    ("China", "Beijing", ("Shanghai", "Guangzhou", "Shenzhen")),
    ("Russia", "Moscow", ()), ("the United Kingdom", "London", ()), ("Egypt", "Cairo", ()),
    ("Canada", "Ottawa", ("Toronto", "Vancouver", "Montreal")),
    ("Australia", "Canberra", ("Sydney", "Melbourne", "Perth")),
    ("Greece", "Athens", ()), ("Portugal", "Lisbon", ()), ("Ireland", "Dublin", ()),
    ("Norway", "Oslo", ()), ("Sweden", "Stockholm", ()), ("Finland", "Helsinki", ()),
    ("Denmark", "Copenhagen", ()), ("Poland", "Warsaw", ()), ("Austria", "Vienna", ()),
    ("Hungary", "Budapest", ()), ("the Czech Republic", "Prague", ()),
    ("Belgium", "Brussels", ()), ("Mexico", "Mexico City", ()),
    ("Argentina", "Buenos Aires", ()), ("Peru", "Lima", ()), ("Chile", "Santiago", ()),
    ("Kenya", "Nairobi", ()), ("Thailand", "Bangkok", ()), ("South Korea", "Seoul", ()),
    ("India", "New Delhi", ("Mumbai", "Kolkata", "Chennai")),
    ("Iran", "Tehran", ()), ("Iraq", "Baghdad", ()), ("Cuba", "Havana", ()),
    ("Turkey", "Ankara", ("Istanbul", "Izmir", "Antalya")),
    ("the Philippines", "Manila", ()),
    ("Vietnam", "Hanoi", ("Da Nang", "Hai Phong", "Hue")),
    ("Saudi Arabia", "Riyadh", ()), ("Ukraine", "Kyiv", ()),
    ("the United States", "Washington, D.C.", ("New York", "Los Angeles", "Chicago")),
    ("Brazil", "Brasilia", ("Rio de Janeiro", "Sao Paulo", "Salvador")),
    ("Iceland", "Reykjavik", ()), ("Colombia", "Bogota", ()), ("Venezuela", "Caracas", ()),
    ("New Zealand", "Wellington", ("Auckland", "Christchurch", "Queenstown")),
    ("Nigeria", "Abuja", ("Lagos", "Kano", "Ibadan")),
    ("Pakistan", "Islamabad", ("Karachi", "Lahore", "Peshawar")),
    ("Morocco", "Rabat", ("Casablanca", "Marrakesh", "Fez")),
    ("Ethiopia", "Addis Ababa", ()),
]

_PALETTE = ["red", "blue", "green", "yellow", "white", "black", "orange", "purple", "brown", "pink"]
# (question, answer, colours that must not be offered as distractors)
_COLOURS: list[tuple[str, str, tuple[str, ...]]] = [
    ("What colour is fresh grass?", "green", ()),
    ("What colour is the sky on a clear, sunny day?", "blue", ()),
    ("What colour is fresh snow?", "white", ()),
    ("What colour is a ripe banana?", "yellow", ("brown", "green")),
    ("What colour is coal?", "black", ("brown",)),
    ("What colour is a ripe tomato?", "red", ("orange",)),
    ("What colour is a carrot?", "orange", ()),
    ("What colour is milk?", "white", ()),
    ("What colour is a ripe lemon?", "yellow", ("green",)),
    ("What colour is blood?", "red", ()),
    ("What colour is milk chocolate?", "brown", ("black",)),
    ("What colour are most leaves in summer?", "green", ()),
    ("What colour is a polar bear's fur?", "white", ()),
    ("What colour is a crow?", "black", ()),
    ("What colour is a pumpkin?", "orange", ("yellow",)),
    ("What colour is an eggplant?", "purple", ("black",)),
    ("What colour is a ripe strawberry?", "red", ("pink",)),
    ("What colour is a school bus in the United States?", "yellow", ("orange",)),
    ("What colour is table salt?", "white", ()),
    ("What colour is a stop sign?", "red", ()),
    ("What colour is a lime?", "green", ("yellow",)),
    ("What colour is charcoal?", "black", ()),
    ("What colour is a flamingo?", "pink", ("red", "orange")),
    ("What colour is a lavender flower?", "purple", ("blue", "pink")),
    ("What colour is the yolk of a chicken egg?", "yellow", ("orange",)),
    ("What colour is a cucumber's skin?", "green", ()),
    ("What colour is the trunk of an oak tree?", "brown", ()),
    ("What colour is a cloud on a sunny day?", "white", ()),
]

# (word, opposite)
_OPPOSITES: list[tuple[str, str]] = [
    ("hot", "cold"), ("up", "down"), ("yes", "no"), ("left", "right"), ("wet", "dry"),
    ("full", "empty"), ("early", "late"), ("tall", "short"), ("true", "false"),
    ("win", "lose"), ("push", "pull"), ("buy", "sell"), ("love", "hate"), ("north", "south"),
    ("east", "west"), ("above", "below"), ("inside", "outside"), ("rich", "poor"),
    ("strong", "weak"), ("thick", "thin"), ("hard", "soft"), ("happy", "sad"),
    ("fast", "slow"), ("big", "small"), ("day", "night"), ("open", "closed"),
    ("clean", "dirty"), ("awake", "asleep"), ("noisy", "quiet"), ("first", "last"),
    ("question", "answer"), ("boy", "girl"),
]

# (animal, sound, animals to exclude as distractors, sounds to exclude as distractors)
# Answers too close to each other in meaning to serve as each other's distractors.
_NEAR_OPPOSITES = [{"down", "below"}, {"short", "small", "thin"}, {"late", "last"}]

_ANIMALS: list[tuple[str, str, tuple[str, ...], tuple[str, ...]]] = [
    ("cow", "moo", (), ()), ("dog", "woof", (), ()), ("cat", "meow", (), ("hiss",)),
    ("pig", "oink", (), ()), ("sheep", "baa", (), ()), ("duck", "quack", (), ()),
    ("horse", "neigh", ("donkey",), ()), ("snake", "hiss", ("cat",), ()),
    ("lion", "roar", (), ()), ("bee", "buzz", (), ()), ("owl", "hoot", (), ()),
    ("frog", "ribbit", (), ()), ("rooster", "cock-a-doodle-doo", (), ()),
    ("mouse", "squeak", (), ()), ("turkey", "gobble", (), ()),
    ("donkey", "hee-haw", ("horse",), ("neigh",)),
]

_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]
# (question, answer, distractors)
_COUNTS: list[tuple[str, str, tuple[str, ...]]] = [
    ("How many days are in a week?", "seven", ("five", "six", "ten")),
    ("How many months are in a year?", "twelve", ("ten", "eleven", "fourteen")),
    ("How many hours are in a day?", "24", ("12", "20", "36")),
    ("How many minutes are in an hour?", "60", ("30", "50", "100")),
    ("How many legs does a spider have?", "eight", ("four", "six", "ten")),
    ("How many legs does a dog have?", "four", ("two", "six", "eight")),
    ("How many wheels does a bicycle have?", "two", ("one", "three", "four")),
    ("How many sides does a triangle have?", "three", ("four", "five", "six")),
]

# (singular, plural, wrong forms)
_PLURALS: list[tuple[str, str, tuple[str, str, str]]] = [
    ("child", "children", ("childs", "childes", "childrens")),
    ("mouse", "mice", ("mouses", "mices", "meese")),
    ("foot", "feet", ("foots", "feets", "footes")),
    ("tooth", "teeth", ("tooths", "teeths", "toothes")),
    ("goose", "geese", ("gooses", "geeses", "goosen")),
    ("man", "men", ("mans", "mens", "mannes")),
    ("woman", "women", ("womans", "womens", "womanes")),
    ("box", "boxes", ("boxs", "boxen", "boxies")),
    ("baby", "babies", ("babys", "babyes", "babis")),
    ("leaf", "leaves", ("leafes", "leavs", "leafen")),
    ("knife", "knives", ("knifes", "knifs", "knive")),
    ("wolf", "wolves", ("wolfs", "wolfes", "wolvs")),
    ("ox", "oxen", ("oxes", "oxs", "oxies")),
    ("city", "cities", ("citys", "cityes", "citis")),
    ("bus", "buses", ("buss", "busies", "busen")),
    ("dog", "dogs", ("dogz", "doggs", "dogen")),
    ("book", "books", ("bookes", "booken", "bookses")),
    ("dish", "dishes", ("dishs", "dishies", "dishen")),
    ("potato", "potatoes", ("potatos", "potatoies", "potaties")),
    ("wife", "wives", ("wifes", "wifs", "wivs")),
    ("half", "halves", ("halfs", "halfes", "halvs")),
    ("glass", "glasses", ("glasss", "glassies", "glassen")),
    ("church", "churches", ("churchs", "churchies", "churchen")),
    ("cat", "cats", ("catz", "caties", "catten")),
    ("tomato", "tomatoes", ("tomatos", "tomatoies", "tomaties")),
    ("apple", "apples", ("appleses", "applen", "appls")),
    ("lady", "ladies", ("ladys", "ladyes", "ladis")),
    ("fox", "foxes", ("foxs", "foxen", "foxies")),
    ("story", "stories", ("storyes", "storis", "storien")),
    ("brush", "brushes", ("brushs", "brushies", "brushen")),
]


def _q(text: str) -> str:
    return f"Question: {text}\nAnswer:"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _items() -> list[tuple[str, str, list[str], str]]:
    """The fixed item bank: (question prompt, answer, three distractors, category)."""
    rng = random.Random(20240611)  # content only; never depends on the caller's seed
    items: list[tuple[str, str, list[str], str]] = []

    all_capitals = [c for _, c, _ in _CAPITALS]
    for country, capital, fixed in _CAPITALS:
        wrong = list(fixed) or rng.sample([c for c in all_capitals if c != capital], 3)
        items.append((_q(f"What is the capital of {country}?"), capital, wrong, "capitals"))

    for question, colour, excluded in _COLOURS:
        pool = [c for c in _PALETTE if c != colour and c not in excluded]
        items.append((_q(question), colour, rng.sample(pool, 3), "colours"))

    arith: list[tuple[str, int]] = []
    for _ in range(25):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        arith.append((f"What is {a} + {b}?", a + b))
    for _ in range(15):
        a = rng.randint(5, 15)
        b = rng.randint(1, a - 1)
        arith.append((f"What is {a} - {b}?", a - b))
    for _ in range(10):
        a, b = rng.randint(2, 5), rng.randint(2, 5)
        arith.append((f"What is {a} times {b}?", a * b))
    seen_q: set[str] = set()
    for question, ans in arith:
        if question in seen_q:
            continue
        seen_q.add(question)
        pool = [ans + d for d in (-3, -2, -1, 1, 2, 3, 10) if ans + d >= 0]
        wrong = [str(x) for x in rng.sample(pool, 3)]
        items.append((_q(question), str(ans), wrong, "arithmetic"))

    answers = [o for _, o in _OPPOSITES]
    for word, opposite in _OPPOSITES:
        near = set().union(*(c for c in _NEAR_OPPOSITES if opposite in c))
        others = [a for a in answers if a != opposite and a not in near]
        wrong = [word] + rng.sample(others, 2)
        items.append((_q(f"What is the opposite of '{word}'?"), opposite, wrong, "opposites"))

    animals = [a for a, *_ in _ANIMALS]
    sounds = [s for _, s, *_ in _ANIMALS]
    for animal, sound, no_animals, no_sounds in _ANIMALS:
        pool_a = [a for a in animals if a != animal and a not in no_animals]
        pool_s = [s for s in sounds if s != sound and s not in no_sounds]
        items.append((_q(f"Which animal says '{sound}'?"), animal, rng.sample(pool_a, 3),
                      "animal_sounds"))
        items.append((_q(f"What sound does {_article(animal)} {animal} make?"), sound, rng.sample(pool_s, 3),
                      "animal_sounds"))

    for seq, kind in ((_DAYS, "day"), (_MONTHS, "month")):
        for i, name in enumerate(seq):
            nxt, prev = seq[(i + 1) % len(seq)], seq[i - 1]
            pool = [x for x in seq if x not in (name, nxt, prev)]
            items.append((_q(f"Which {kind} comes after {name}?"), nxt,
                           rng.sample(pool, 2) + [prev], "calendar"))
            items.append((_q(f"Which {kind} comes before {name}?"), prev,
                           rng.sample(pool, 2) + [nxt], "calendar"))
    for question, ans, wrong in _COUNTS:
        items.append((_q(question), ans, list(wrong), "counting"))

    for singular, plural, wrong in _PLURALS:
        items.append((_q(f"What is the plural of '{singular}'?"), plural, list(wrong), "plurals"))
    return items


def generate(seed: int = 0) -> list[dict]:
    """Return >= 200 rows {"question", "choices" (4), "label", "category"}; seed shuffles order/positions."""
    rng = random.Random(seed)
    items = _items()
    rng.shuffle(items)
    positions = [i % 4 for i in range(len(items))]
    rng.shuffle(positions)
    rows: list[dict] = []
    for (question, answer, wrong, category), pos in zip(items, positions):
        distractors = list(wrong)
        rng.shuffle(distractors)
        choices = distractors[:pos] + [answer] + distractors[pos:]
        rows.append({"question": question, "choices": choices, "label": pos,
                     "category": category})
    return rows
