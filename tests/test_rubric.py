"""The gold rubric on hand-written cases: each flaw lowers its own component and the total; each
preference quality raises its own; spam earns nothing."""

import pytest

from rlhf_edu.rubric import (
    COMPONENTS,
    FORMAT,
    PREFERENCE,
    WEIGHTS,
    concept_of,
    score,
    score_batch,
    sentences,
    word_forms,
)

P = "Explain a volcano to a 10-year-old."
# Good in form, none of the preference qualities: half the total.
PLAIN = (
    "A volcano is a mountain with a hole at the top. Deep under the ground, rock gets so hot that it "
    "melts. When the hot rock pushes up and spills out, we call it lava!"
)
# Good in form, with an everyday comparison, spoken to the child, with a thing from a child's day.
IDEAL = (
    "A volcano is a mountain with a hole at the top. Deep under the ground, rock gets so hot that it "
    "melts. It's like a soda bottle you shake before you open it, when the hot rock spills out as lava!"
)
CASES = {
    "rude": (
        "Dumbass, a volcano is a mountain with a hole at the top. Hot melted rock comes out of it. Got it?",
        True,
        "polite",
    ),
    "truncated": (
        "A volcano is a mountain with a hole at the top. Deep under the ground, rock gets so hot that",
        False,
        "finished",
    ),
    "repetitive": (
        "A volcano is a big volcano. Imagine a volcano with a really big volcano with a big volcano. A volcano is a big volcano with a big volcano.",
        True,
        "no_repetition",
    ),
    "off_topic": (
        "Cats are small furry animals that like to sleep a lot. They purr when they are happy. Many people keep them as pets.",
        True,
        "on_topic",
    ),
    "complicated": (
        "A volcano constitutes a geological formation whereby subterranean magmatic material experiences extrusion through crustal apertures. Pyroclastic phenomena frequently accompany eruptions.",
        True,
        "simple",
    ),
    "too_long": (" ".join([PLAIN] * 3).replace("lava!", "lava."), True, "length"),
}


def test_weights_sum_to_one_and_split_half_and_half():
    assert sum(WEIGHTS.values()) == pytest.approx(1.0)
    assert sum(WEIGHTS[c] for c in FORMAT) == pytest.approx(0.5)
    assert sum(WEIGHTS[c] for c in PREFERENCE) == pytest.approx(0.5)
    assert COMPONENTS == FORMAT + PREFERENCE


def test_ideal_is_perfect_and_plain_is_half():
    total, components = score(P, IDEAL)
    assert {c: components[c] for c in PREFERENCE} == {c: 1.0 for c in PREFERENCE}
    assert total == pytest.approx(sum(WEIGHTS[c] * components[c] for c in COMPONENTS))
    assert total > 0.97
    plain_total, plain = score(P, PLAIN)
    assert plain_total == pytest.approx(0.5)  # reference value: every format component 1, no preference
    assert {c: plain[c] for c in FORMAT} == {c: 1.0 for c in FORMAT}


@pytest.mark.parametrize("name", list(CASES))
def test_each_flaw_lowers_its_component_and_the_total(name):
    text, eos, component = CASES[name]
    total, components = score(P, text, eos=eos)
    plain_total, plain = score(P, PLAIN)
    assert total < plain_total
    assert components[component] < plain[component]
    assert components[component] == min(components[c] for c in FORMAT)  # the flaw is the worst part
    assert all(0.0 <= v <= 1.0 for v in components.values())


G = "Explain gravity to a 10-year-old."
GRAVITY = (
    "Gravity is a pull between things. It keeps the Moon going around the Earth. It also pulls rain down from clouds."
)
QUALITY_CASES = {
    "comparison": "Gravity is a pull between things. It works like an invisible rope tied to the Earth. It also pulls rain down from clouds.",
    "speaks_to_child": "Gravity is a pull between things. When you jump up, it brings you back down. It also pulls rain down from clouds.",
    "everyday_detail": "Gravity is a pull between things. It makes a dropped pencil fall to the floor in class. It also pulls rain down from clouds.",
}


@pytest.mark.parametrize("quality", PREFERENCE)
def test_each_quality_raises_its_own_component_by_its_weight(quality):
    base_total, base = score(G, GRAVITY)
    assert all(base[c] == 0.0 for c in PREFERENCE) and base_total == pytest.approx(0.5)
    total, components = score(G, QUALITY_CASES[quality])
    assert components[quality] == 1.0
    assert [c for c in PREFERENCE if components[c] > 0] == [quality]
    assert total == pytest.approx(base_total + WEIGHTS[quality], abs=0.02)


@pytest.mark.parametrize(
    "text",
    [
        "Gravity is a pull between things. Gravity is like gravity. It pulls rain down from clouds.",  # compares the concept with itself
        "Gravity is a pull between things. It is like a big, big thing. It pulls rain down from clouds.",  # nothing on the other side
        "I would like gravity to be a pull between things. It keeps the Moon near the Earth. It pulls rain down.",  # "like" the verb
    ],
)
def test_a_comparison_needs_something_else_on_its_other_side(text):
    assert score(G, text)[1]["comparison"] == 0.0


def test_thank_you_and_short_you_do_not_speak_to_the_child():
    text = "Gravity is a pull between things. Thank you for the great question about it. See you."
    assert score(G, text)[1]["speaks_to_child"] == 0.0


def test_a_concept_word_is_not_an_everyday_detail():
    text = "Ice melting is when ice turns into water. Heat makes the ice soft and runny. Then it is water again."
    assert score("Explain ice melting to a 10-year-old.", text)[1]["everyday_detail"] == 0.0


@pytest.mark.parametrize(
    "spam",
    [
        "You you you you you your your your gravity.",
        "Gravity is like like like like like like a ball ball ball.",
        "Gravity. You. Like a ball. Your pizza. You. Like a pizza. Your ball. Like a ball. Your pizza. You.",
        "Pizza! " * 30,
        "Cats are fun pets to have at home. It's like your lunchbox at school. You eat pizza at lunch with your friends.",  # off topic
        GRAVITY
        + " "
        + QUALITY_CASES["comparison"]
        + " When you jump up with your ball, it is like a bike on a hill, and you see "
        "your friend and your dog and your toys and your lunch and your bed and your bath fall, like a ball falling down.",  # a ramble
    ],
)
def test_spam_earns_no_preference_credit(spam):
    total, components = score(G, spam)
    assert all(components[c] == 0.0 for c in PREFERENCE) or total < score(G, GRAVITY)[0]
    assert total < score(G, GRAVITY)[0] + 0.01


def test_reference_values_against_a_naive_weighted_mean():
    """The total equals a naive recomputation: format components averaged, preference components
    gated by finished x length x on_topic x no_repetition and averaged, half and half."""
    for text, eos in [
        (IDEAL, True),
        (PLAIN, True),
        (CASES["truncated"][0], False),
        (QUALITY_CASES["comparison"], True),
    ]:
        total, c = score(P if text in (IDEAL, PLAIN, CASES["truncated"][0]) else G, text, eos=eos)
        fmt = sum(c[k] for k in FORMAT) / 6
        gate = c["finished"] * c["length"] * c["on_topic"] * c["no_repetition"]
        assert all(c[k] <= gate + 1e-12 for k in PREFERENCE)
        assert total == pytest.approx(0.5 * fmt + 0.5 * sum(c[k] for k in PREFERENCE) / 3)


def test_truncation_needs_eos_and_punctuation():
    assert score(P, IDEAL, eos=False)[1]["finished"] == 0.0
    assert score(P, IDEAL.rstrip("!"), eos=True)[1]["finished"] == 0.5
    assert score(P, IDEAL, eos=True)[1]["finished"] == 1.0


def test_rude_scores_below_truncated_polite_only_in_politeness():
    rude = score(P, CASES["rude"][0])[1]
    assert rude["polite"] == 0.0 and rude["finished"] == 1.0


def test_sad_topics_are_not_impolite():
    text = "Allergies happen when your body mistakes something harmless for a dangerous germ. It overreacts and can cause sneezing or a rash. Some allergies are serious, so always tell a grown-up."
    assert score("Explain allergies to a 10-year-old.", text)[1]["polite"] == 1.0


def test_close_forms_count_as_on_topic():
    assert word_forms("volcanoes") >= {"volcano"}
    assert word_forms("maps") >= {"map"}
    assert word_forms("countries") >= {"country"}
    text = "Volcanoes are mountains that can erupt. Hot rock comes out. It is called lava."
    assert score(P, text)[1]["on_topic"] == 1.0
    assert score("Explain the water cycle to a 10-year-old.", "Water goes up and comes down.")[1]["on_topic"] == 0.5


def test_parsing_helpers():
    assert concept_of("Explain the water cycle to a 10-year-old.") == "the water cycle"
    assert concept_of("What is rain?") == "What is rain?"
    assert sentences("One. Two! Three? four") == ["One.", "Two!", "Three?", "four"]
    assert sentences("It costs 2.5 dollars. Yes.") == ["It costs 2.5 dollars.", "Yes."]


def test_deterministic_and_batch_matches_single():
    rows = score_batch([P, P], [IDEAL, CASES["rude"][0]], [True, True])
    assert rows[0]["gold"] == score(P, IDEAL)[0]
    assert rows[1]["polite"] == 0.0
    assert score_batch([P], [IDEAL]) == score_batch([P], [IDEAL])
    with pytest.raises(ValueError, match="lengths differ"):
        score_batch([P], [IDEAL, IDEAL])
    with pytest.raises(TypeError, match="two strings"):
        score(P, None)


def test_demonstrations_are_good_in_form_and_show_the_preferences_only_sometimes():
    """The demonstrations teach the format; each preference quality appears in only part of them,
    so imitation cannot saturate the rubric (measured rates: data/README.md)."""
    from rlhf_edu.data import load_sft_demos

    demos = list(load_sft_demos())
    rows = score_batch([r["prompt"] for r in demos], [r["response"] for r in demos])
    for c in FORMAT:
        assert sum(r[c] for r in rows) / len(rows) > 0.95, c
    for c in PREFERENCE:
        assert 0.1 < sum(r[c] for r in rows) / len(rows) < 0.5, c
    assert sum(r["gold"] for r in rows) / len(rows) < 0.75
