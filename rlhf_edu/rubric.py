"""The gold annotator: a transparent, deterministic rubric for "Explain <concept> to a 10-year-old."

`score(prompt, response, eos=True) -> (total, components)`. Each component is in [0, 1]; the total is
their weighted mean, also in [0, 1]. The rubric plays the part of the gold reward model of
Gao et al. (2022), "Scaling Laws for Reward Model Overoptimization": it measures every policy in the
course, but PPO only ever optimizes a *learned* reward model, so over-optimization shows up honestly.

Components (what a parent would check first):

    finished       ended by itself (EOS inside the token budget) on sentence punctuation
    length         2 to 4 short sentences, 15 to 60 words
    on_topic       names the concept, or a close form of it ("volcanoes" for "a volcano")
    simple         mostly short words (syllables counted with pyphen) and short sentences
    no_repetition  few repeated word 3-grams
    polite         no insults or put-downs; tone not hostile (VADER compound above -0.9)

What it cannot judge: whether the facts are true, whether the analogy helps, whether a child would
enjoy it. "Gravity is a big hug from your mommy" scores well. Real RLHF uses people for exactly the
judgments a rubric cannot make; notebook 02 compares the learner's own labels with this rubric.
"""

from __future__ import annotations

import re
from functools import lru_cache

COMPONENTS = ("finished", "length", "on_topic", "simple", "no_repetition", "polite")
WEIGHTS = {name: 1.0 / len(COMPONENTS) for name in COMPONENTS}

TARGET_SENTENCES = (2, 4)
TARGET_WORDS = (15, 60)

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")
_PROMPT = re.compile(r"^\s*explain\s+(.+?)\s+to\s+an?\s+\d+[- ]year[- ]old", re.IGNORECASE)
_STOPWORDS = frozenset(
    ["a", "an", "the", "of", "to", "in", "on", "and", "or", "for", "with", "how", "what", "why", "is", "are", "does", "do", "it", "its", "by", "at", "from", "as", "be"]
)
INSULTS = frozenset(
    ["dumb", "dumbass", "dummy", "stupid", "idiot", "idiots", "idiotic", "moron", "morons", "loser", "losers", "jerk", "fool", "foolish", "crap", "damn", "stupidity", "dumber"]
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
    """0 with an insult, 0.5 with a put-down or a hostile tone (VADER compound < -0.9; sad topics score about -0.8), else 1."""
    ws = set(words(response))
    lowered = response.lower()
    if ws & INSULTS or "shut up" in lowered:
        return 0.0
    if any(phrase in lowered for phrase in PUT_DOWNS):
        return 0.5
    if _vader().polarity_scores(response)["compound"] < -0.9:
        return 0.5
    return 1.0


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
