"""The gold rubric on hand-written cases: each flaw lowers its own component and the total."""

import pytest

from rlhf_edu.rubric import COMPONENTS, concept_of, score, score_batch, sentences, word_forms

P = "Explain a volcano to a 10-year-old."
IDEAL = (
    "A volcano is a mountain with a hole at the top. Deep under the ground, rock gets so hot that it "
    "melts. When the hot rock pushes up and spills out, we call it lava!"
)
CASES = {
    "rude": ("Dumbass, a volcano is a mountain with a hole at the top. Hot melted rock comes out of it. Got it?", True, "polite"),
    "truncated": ("A volcano is a mountain with a hole at the top. Deep under the ground, rock gets so hot that", False, "finished"),
    "repetitive": ("A volcano is a big volcano. Imagine a volcano with a really big volcano with a big volcano. A volcano is a big volcano with a big volcano.", True, "no_repetition"),
    "off_topic": ("Cats are small furry animals that like to sleep a lot. They purr when they are happy. Many people keep them as pets.", True, "on_topic"),
    "complicated": ("A volcano constitutes a geological formation whereby subterranean magmatic material experiences extrusion through crustal apertures. Pyroclastic phenomena frequently accompany eruptions.", True, "simple"),
    "too_long": (" ".join([IDEAL] * 3).replace("lava!", "lava."), True, "length"),
}


def test_ideal_is_perfect():
    total, components = score(P, IDEAL)
    assert total == pytest.approx(1.0)
    assert set(components) == set(COMPONENTS)


@pytest.mark.parametrize("name", list(CASES))
def test_each_flaw_lowers_its_component_and_the_total(name):
    text, eos, component = CASES[name]
    total, components = score(P, text, eos=eos)
    ideal_total, ideal = score(P, IDEAL)
    assert total < ideal_total
    assert components[component] < ideal[component]
    assert components[component] == min(components.values())  # the flaw is the worst part
    assert all(0.0 <= v <= 1.0 for v in components.values())


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


def test_demonstrations_score_high():
    from rlhf_edu.data import load_sft_demos
    from rlhf_edu.metrics import mean_and_se

    demos = load_sft_demos()
    mean, _ = mean_and_se([score(r["prompt"], r["response"])[0] for r in demos])
    assert mean > 0.95
