"""The gold annotator: a transparent, deterministic rubric for "Explain <concept> to a 10-year-old."

`score(prompt, response, eos=True) -> (total, components)`. Each component is in [0, 1]; the total is
their weighted sum, also in [0, 1]. The rubric plays the part of the gold reward model of
Gao et al. (2022), "Scaling Laws for Reward Model Overoptimization": it measures every policy in the
course, but PPO only ever optimizes a *learned* reward model, so over-optimization shows up honestly.

Format components (half the total; demonstrations teach them and SFT learns them):

    finished         ended by itself (EOS inside the token budget) on sentence punctuation
    length           2 to 4 short sentences, 15 to 60 words
    on_topic         names the concept, or a close form of it ("volcanoes" for "a volcano")
    simple           mostly short words (syllables counted with pyphen) and short sentences
    no_repetition    few repeated word 3-grams
    polite           no insults or put-downs; tone not hostile (VADER compound above -0.9)

Preference components (the other half): what a parent prefers and the demonstrations show only some
of the time, as InstructGPT's labelers preferred qualities its demonstrators did not always write
(Ouyang et al. 2022). Comparisons teach them; imitation alone does not raise them.

    comparison       an everyday comparison or example ("It's like a ...", "Imagine ...", "for
                     example ...") whose other side is something else than the concept itself
    speaks_to_child  talks to the child: a sentence of five words or more in the second person
                     ("When you ...", "your hands"), not "thank you" or "you know"
    everyday_detail  a concrete thing from a child's day (a lunchbox, a bike, a bath, a puddle; the
                     list is `EVERYDAY`), other than a word of the concept itself

Each is 1 or 0, times finished x length x on_topic x no_repetition: a preference counts only in an
answer that is already good in form, so a keyword repeated, pasted into an answer about something
else, or buried in a long ramble earns little or nothing (tests/test_rubric.py checks each kind). Measured rates, in the
demonstrations and in SFT samples, are in data/README.md (`scripts/quality_rates.py`). A fourth
quality, a closing invitation to notice or try something, was measured and left out: the SFT policy
ends that way too rarely for reinforcement learning to find it.

What it cannot judge: whether the facts are true, whether the analogy helps, whether a child would
enjoy it. "Gravity is a big hug from your mommy" scores well. Real RLHF uses people for exactly the
judgments a rubric cannot make; notebook 02 compares the learner's own labels with this rubric.
"""

from __future__ import annotations

import re
from functools import lru_cache

FORMAT = ("finished", "length", "on_topic", "simple", "no_repetition", "polite")
PREFERENCE = ("comparison", "speaks_to_child", "everyday_detail")
COMPONENTS = FORMAT + PREFERENCE
PREFERENCE_WEIGHT = 0.5
"""The share of the total that the preference components carry (the format components the rest)."""
WEIGHTS = {
    **{name: (1 - PREFERENCE_WEIGHT) / len(FORMAT) for name in FORMAT},
    **{name: PREFERENCE_WEIGHT / len(PREFERENCE) for name in PREFERENCE},
}

TARGET_SENTENCES = (2, 4)
TARGET_WORDS = (15, 60)

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")
_PROMPT = re.compile(r"^\s*explain\s+(.+?)\s+to\s+an?\s+\d+[- ]year[- ]old", re.IGNORECASE)
_STOPWORDS = frozenset(
    """
    a an the of to in on and or for with how what why is are does do it its by at from as be
    """.split()  # noqa: SIM905 (a word list reads best as text)
)
INSULTS = frozenset(
    """
    dumb dumbass dummy stupid idiot idiots idiotic moron morons loser losers jerk fool foolish crap
    damn stupidity dumber
    """.split()  # noqa: SIM905 (a word list reads best as text)
)
PUT_DOWNS = ("don't you know", "do you even", "obviously", "everyone knows", "duh", "even a baby")


def words(text: str) -> list[str]:
    """Lowercase words (letters, digits, one apostrophe part)."""
    return _WORD.findall(text.lower())


def sentences(text: str) -> list[str]:
    """Split on . ! ? followed by a space or the end; a trailing fragment counts as a sentence."""
    parts, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        parts.append(text[start : match.end()].strip())
        start = match.end()
    tail = text[start:].strip()
    if words(tail):
        parts.append(tail)
    return [p for p in parts if words(p)]


def concept_of(prompt: str) -> str:
    """The concept in "Explain <concept> to a 10-year-old.", else the whole prompt."""
    match = _PROMPT.match(prompt)
    return match.group(1) if match else prompt


def word_forms(word: str) -> set[str]:
    """A word and its crude singular/base forms, so "volcanoes" meets "volcano" and "maps" meets
    "map" (no stemmer data is downloaded: NLTK's would need network)."""
    forms = {word}
    if word.endswith("ies") and len(word) > 4:
        forms.add(word[:-3] + "y")
    if word.endswith("es") and len(word) > 4:
        forms.add(word[:-2])
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        forms.add(word[:-1])
    for suffix in ("ic", "al", "ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            forms.add(word[: -len(suffix)])
    return forms


@lru_cache(maxsize=1)
def _hyphenator():
    import pyphen

    return pyphen.Pyphen(lang="en_US")


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def syllables(word: str) -> int:
    """Syllables as hyphenation points + 1 (pyphen's en_US dictionary; a slight undercount)."""
    return len(_hyphenator().positions(word)) + 1


def _clip01(x: float) -> float:
    return max(0.0, min(1.0, x))


def finished_score(response: str, eos: bool) -> float:
    """1 if it ended by itself on . ! or ?, 0.5 if it ended without punctuation, 0 if cut off."""
    if not eos:
        return 0.0
    return 1.0 if re.search(r"[.!?][\"')\]]*\s*$", response) else 0.5


def length_score(response: str) -> float:
    """1 inside 2-4 sentences and 15-60 words; falls off linearly outside either band."""
    n_sent, n_words = len(sentences(response)), len(words(response))
    lo, hi = TARGET_SENTENCES
    sentence_part = 1.0 if lo <= n_sent <= hi else _clip01(1 - 0.5 * max(lo - n_sent, n_sent - hi))
    lo, hi = TARGET_WORDS
    if n_words < lo:
        word_part = n_words / lo
    else:
        word_part = _clip01(1 - (n_words - hi) / hi)
    return sentence_part * word_part


def on_topic_score(prompt: str, response: str) -> float:
    """Share of the concept's content words that the response names (stems compared)."""
    keys = [word_forms(w) for w in dict.fromkeys(words(concept_of(prompt))) if w not in _STOPWORDS]
    if not keys:
        return 1.0
    present = set().union(*(word_forms(w) for w in words(response))) if words(response) else set()
    return sum(bool(forms & present) for forms in keys) / len(keys)


def simple_score(prompt: str, response: str) -> float:
    """Half short words (mean syllables per word, concept words excluded), half short sentences."""
    concept = set().union(*(word_forms(w) for w in words(concept_of(prompt))))
    ws = [w for w in words(response) if not word_forms(w) & concept]
    if not ws:
        return 0.0
    syllables_per_word = sum(syllables(w) for w in ws) / len(ws)
    word_part = _clip01((1.6 - syllables_per_word) / 0.35)  # 1.25 or less: 1; 1.6 or more: 0
    sents = sentences(response)
    words_per_sentence = len(words(response)) / max(len(sents), 1)
    sentence_part = _clip01((28 - words_per_sentence) / 12)  # 16 or fewer: 1; 28 or more: 0
    return 0.5 * word_part + 0.5 * sentence_part


def no_repetition_score(response: str) -> float:
    """1 - 4 x (share of word 3-grams that repeat an earlier one), floored at 0."""
    ws = words(response)
    grams = [tuple(ws[i : i + 3]) for i in range(len(ws) - 2)]
    if len(grams) < 2:
        return 1.0
    repeated = len(grams) - len(set(grams))
    return _clip01(1 - 4 * repeated / len(grams))


def polite_score(response: str) -> float:
    """0 with an insult, 0.5 with a put-down or a hostile tone (VADER compound < -0.9; sad topics
    score about -0.8), else 1."""
    ws = set(words(response))
    lowered = response.lower()
    if ws & INSULTS or "shut up" in lowered:
        return 0.0
    if any(phrase in lowered for phrase in PUT_DOWNS):
        return 0.5
    if _vader().polarity_scores(response)["compound"] < -0.9:
        return 0.5
    return 1.0


# Things a 10-year-old meets in a day: home, school, play, food, body, family and pets, outdoors.
EVERYDAY = frozenset(
    """
    kitchen fridge freezer oven stove toaster microwave sink bath bathtub shower towel soap
    toothbrush toothpaste bed pillow blanket sofa couch chair table window door stairs garage
    backyard garden lamp flashlight cup mug glass spoon fork plate bowl jar bottle straw sponge
    mirror umbrella school class classroom teacher desk pencil crayon crayons eraser ruler backpack
    lunchbox lunch recess homework notebook playground library bus toy toys ball balls bike bicycle
    skateboard scooter swing swings slide seesaw trampoline kite balloon balloons lego blocks puzzle
    puzzles game games marbles sandbox sandcastle soccer basketball football baseball tennis
    hopscotch drum chalk breakfast dinner snack sandwich pizza cereal juice milk cookie cookies cake
    candy popcorn pancake pancakes apple apples banana orange oranges lemon egg eggs bread toast
    soup cheese chocolate ice-cream icecream spaghetti noodles carrot carrots peas rice yogurt
    lemonade hand hands finger fingers feet foot toes knee knees tummy nose teeth tooth hair skin
    elbow mom dad mum mommy daddy grandma grandpa grandparents brother sister friend friends family
    dog dogs puppy cat cats kitten hamster goldfish pet pets puddle puddles park sidewalk snowman
    snowball sled pool beach sand shell shells leaf leaves bus car car's bike's shoes socks jacket
    coat hat mittens gloves sweater birthday party sleepover
    """.split()  # noqa: SIM905 (a word list reads best as text)
)
_SECOND_PERSON = frozenset(["you", "your", "you're", "you've", "you'll", "you'd", "yourself", "yours"])
_NOT_ADDRESSING = ("thank you", "you know", "do you even", "don't you know", "see you")
_COMPARISON_MARKERS = re.compile(
    r"\b(?:(?<!would )(?<!i )(?<!they )(?<!we )(?<!you )like|imagine|picture|pretend|think of|just as|"
    r"for example|for instance|such as|as if)\b"
)
_VAGUE = frozenset(
    [
        "big",
        "small",
        "tiny",
        "little",
        "huge",
        "giant",
        "really",
        "very",
        "special",
        "kind",
        "sort",
        "type",
        "thing",
        "things",
        "something",
        "way",
        "much",
        "more",
        "lot",
        "lots",
        "this",
        "that",
        "these",
        "those",
        "one",
        "ones",
        "same",
        "other",
        "another",
        "some",
        "all",
        "you",
        "your",
        "we",
        "they",
        "them",
        "there",
    ]
)


def _content_words(text: str, concept: set[str]) -> list[str]:
    """Words of `text` that carry meaning: not a stopword, not vague, not a form of the concept."""
    return [
        w for w in words(text) if len(w) > 2 and w not in _STOPWORDS and w not in _VAGUE and not word_forms(w) & concept
    ]


def _concept_forms(prompt: str) -> set[str]:
    return set().union(*(word_forms(w) for w in words(concept_of(prompt)))) if words(concept_of(prompt)) else set()


def comparison_score(prompt: str, response: str) -> float:
    """1 if a sentence compares the concept with, or gives an example of, something else: a comparison
    marker ("like", "imagine", "think of", "for example", "such as", "as if", ...) followed in its
    clause by a content word that is not the concept ("a volcano is like a big volcano" gets 0)."""
    concept = _concept_forms(prompt)
    for sentence in sentences(response):
        lowered = sentence.lower()
        for match in _COMPARISON_MARKERS.finditer(lowered):
            other_side = re.split(r"[,;:.!?]", lowered[match.end() :], maxsplit=1)[0]
            if _content_words(other_side, concept):
                return 1.0
    return 0.0


def speaks_to_child_score(response: str) -> float:
    """1 if a sentence of five words or more talks to the child in the second person ("When you
    jump, ...", "your hands"); "thank you", "you know" and put-downs do not count."""
    for sentence in sentences(response):
        lowered = sentence.lower()
        for phrase in _NOT_ADDRESSING:
            lowered = lowered.replace(phrase, " ")
        ws = words(lowered)
        if len(ws) >= 5 and _SECOND_PERSON & set(ws):
            return 1.0
    return 0.0


def everyday_detail_score(prompt: str, response: str) -> float:
    """1 if a sentence of five words or more names a thing from a child's day (`EVERYDAY`) that is
    not part of the concept ("ice" does not count for "ice melting")."""
    concept = _concept_forms(prompt)
    for sentence in sentences(response):
        ws = words(sentence)
        if len(ws) >= 5 and any(w in EVERYDAY and not word_forms(w) & concept for w in ws):
            return 1.0
    return 0.0


def score(prompt: str, response: str, eos: bool = True) -> tuple[float, dict[str, float]]:
    """Gold score of one response: (total in [0, 1], {component: value in [0, 1]}).

    `eos` says whether the response ended with EOS inside its token budget (`Samples.has_eos`);
    hand-written text counts as ended.
    """
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise TypeError(f"score() takes two strings, got {type(prompt).__name__} and {type(response).__name__}")
    components = {
        "finished": finished_score(response, eos),
        "length": length_score(response),
        "on_topic": on_topic_score(prompt, response),
        "simple": simple_score(prompt, response),
        "no_repetition": no_repetition_score(response),
        "polite": polite_score(response),
    }
    # A preference counts only in an answer that is already good in form: finished, of a fitting
    # length, on topic, not repeating itself. Spam and long rambles earn none of it.
    gate = components["finished"] * components["length"] * components["on_topic"] * components["no_repetition"]
    components["comparison"] = gate * comparison_score(prompt, response)
    components["speaks_to_child"] = gate * speaks_to_child_score(response)
    components["everyday_detail"] = gate * everyday_detail_score(prompt, response)
    total = sum(WEIGHTS[name] * components[name] for name in COMPONENTS)
    return total, components


def score_batch(prompts: list[str], responses: list[str], eos: list[bool] | None = None) -> list[dict]:
    """Rows of {"gold": total, component: value, ...}, one per response."""
    eos = [True] * len(responses) if eos is None else [bool(e) for e in eos]
    if not (len(prompts) == len(responses) == len(eos)):
        raise ValueError(f"lengths differ: {len(prompts)} prompts, {len(responses)} responses, {len(eos)} eos flags")
    rows = []
    for p, r, e in zip(prompts, responses, eos):
        total, components = score(p, r, e)
        rows.append({"gold": total, **components})
    return rows
