from pathlib import Path

import datasets
import pytest

from rlhf_edu.data import DataError
from rlhf_edu.hub_formats import (
    COLUMNS,
    detect_format,
    from_hh_rlhf,
    from_trl,
    from_ultrafeedback,
    to_course_pairs,
)

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures"

RAIN = {
    "prompt": "Explain rain to a 10-year-old.",
    "chosen": "The sun warms puddles, lakes and oceans, and some of that water floats up as "
    "invisible vapor. High in the sky it cools into tiny droplets that bunch together as clouds. "
    "When the droplets join up and get too heavy to float, they fall back down as rain.",
    "rejected": "Rain is precipitation resulting from the condensation of atmospheric water vapor "
    "into droplets whose mass exceeds the buoyant support of the surrounding air.",
}
RAINBOWS = {
    "prompt": "Explain rainbows to a 10-year-old.",
    "chosen": "Sunlight looks white, but it is really a mix of every color. When sunlight shines "
    "through raindrops, each drop bends the light and spreads the colors apart, like a tiny "
    "prism. That's why you see a rainbow when the sun is behind you and rain is in front of you.",
    "rejected": "Rainbows are made of colored paint that the clouds spill when it rains.",
}
MAGNETS = {
    "prompt": "Explain magnets to a 10-year-old.",
    "chosen": "A magnet has an invisible pulling force around it. It can grab things made of iron, "
    "like paper clips, without touching them. Every magnet has two ends, north and south: "
    "opposite ends pull together and matching ends push apart.",
    "rejected": "Magnets work because of electrons. It's complicated.",
}
CLOUDS = {
    "prompt": "Explain clouds to a 10-year-old.",
    "chosen": "Clouds are made of billions of tiny water droplets, or ice bits, floating high in "
    "the sky. Warm air carries invisible water vapor upward, and as it cools, the vapor turns "
    "into droplets. So many of them gather together that we can see them as a cloud.",
    "rejected": "Clouds are cotton balls that float in the sky.",
}

CASES = [  # fixture, format, rows after conversion, first row
    ("hh_rlhf_sample.jsonl", "hh_rlhf", 4, RAIN),
    ("ultrafeedback_binarized_sample.jsonl", "ultrafeedback", 5, RAINBOWS),
    ("trl_preference_sample.jsonl", "trl", 5, MAGNETS),
    ("trl_conversational_sample.jsonl", "trl", 4, CLOUDS),
]
ADAPTERS = {"hh_rlhf": from_hh_rlhf, "ultrafeedback": from_ultrafeedback, "trl": from_trl}


def _user(text):
    return {"role": "user", "content": text}


def _bot(text):
    return {"role": "assistant", "content": text}


def _hh(human, assistant, history=""):
    return f"{history}\n\nHuman: {human}\n\nAssistant: {assistant}"


def _load(name: str) -> datasets.Dataset:
    return datasets.load_dataset("json", data_files=str(FIXTURES / name), split="train")


# --- The fixtures, loaded the way Colab users load the real sets --------------------------------


@pytest.mark.parametrize("name, fmt, n_pairs, first", CASES)
def test_fixture_converts_to_course_pairs(name, fmt, n_pairs, first):
    ds = _load(name)
    assert detect_format(ds[0]) == fmt
    pairs = to_course_pairs(ds, source=name)
    assert isinstance(pairs, datasets.Dataset)
    assert pairs.column_names == list(COLUMNS)
    assert all(pairs.features[c] == datasets.Value("string") for c in COLUMNS)
    assert len(pairs) == n_pairs
    assert pairs[0] == first
    for row in pairs:
        assert row["prompt"].startswith("Explain ") and row["prompt"].endswith(" a 10-year-old.")
        assert row["chosen"] != row["rejected"]


@pytest.mark.parametrize("name, fmt, n_pairs, first", CASES)
def test_list_of_dicts_and_explicit_format_give_the_same_pairs(name, fmt, n_pairs, first):
    ds = _load(name)
    assert ADAPTERS[fmt](ds.to_list()) == ADAPTERS[fmt](ds) == to_course_pairs(ds, fmt).to_list()


def test_extra_columns_are_dropped():
    ds = _load("trl_preference_sample.jsonl")
    assert "concept" in ds.column_names
    assert list(from_trl(ds)[0]) == list(COLUMNS)


def test_implicit_prompt_conversations():
    rows = [
        {"chosen": [_user(RAIN["prompt"]), _bot(RAIN["chosen"])],
         "rejected": [_user(RAIN["prompt"]), _bot(RAIN["rejected"])]}
    ]  # fmt: skip
    assert detect_format(rows[0]) == "trl"
    assert to_course_pairs(datasets.Dataset.from_list(rows)).to_list() == [RAIN]


def test_texts_are_stripped():
    row = {"prompt": " Explain rain to a 10-year-old.\n", "chosen": " Yes. ", "rejected": "No.\n"}
    assert from_trl([row]) == [{"prompt": RAIN["prompt"], "chosen": "Yes.", "rejected": "No."}]


def test_ultrafeedback_ties_are_skipped():
    rows = _load("ultrafeedback_binarized_sample.jsonl").to_list()
    rows[1]["score_rejected"] = rows[1]["score_chosen"]
    pairs = from_ultrafeedback(rows)
    assert len(pairs) == 4 and "tides" not in " ".join(p["prompt"] for p in pairs)


# --- HH-RLHF multi-turn conversations -----------------------------------------------------------


def test_multi_turn_options():
    ds = _load("hh_rlhf_sample.jsonl")  # rows 4 and 5 have two and three Human turns
    assert from_hh_rlhf(ds) == from_hh_rlhf(ds.select(range(4)))  # "skip" is the default
    last = from_hh_rlhf(ds, multi_turn="last")
    assert len(last) == 6
    assert last[4]["prompt"] == "Explain thunder to a 10-year-old."
    assert last[4]["chosen"].startswith("Lightning is a giant spark")
    assert last[5]["prompt"] == "Explain the seasons to a 10-year-old."
    with pytest.raises(DataError, match=r"hh, row 4 \(0-based\), field 'chosen': 2 'Human:' turns"):
        from_hh_rlhf(ds, source="hh", multi_turn="error")
    with pytest.raises(ValueError, match="multi_turn must be one of"):
        from_hh_rlhf(ds, multi_turn="first")


def test_all_rows_skipped_is_an_error():
    ds = _load("hh_rlhf_sample.jsonl").select([4, 5])
    with pytest.raises(DataError, match="two-turn: all 2 rows were skipped"):
        to_course_pairs(ds, source="two-turn")


# --- Every error names the source, the row (0-based) and the field ------------------------------


P = RAIN["prompt"]
HH_GOOD = {"chosen": _hh(P, "Good."), "rejected": _hh(P, "Bad.")}
UF_GOOD = {
    "prompt": P,
    "prompt_id": "x",
    "chosen": [_user(P), _bot("Good.")],
    "rejected": [_user(P), _bot("Bad.")],
    "score_chosen": 8.0,
    "score_rejected": 3.0,
}
TRL_GOOD = {"prompt": P, "chosen": "Good.", "rejected": "Bad."}
TRL_CONV = {"prompt": [_user(P)], "chosen": [_bot("Good.")], "rejected": [_bot("Bad.")]}
TRL_IMPLICIT = {"chosen": [_user(P), _bot("Good.")], "rejected": [_user(P), _bot("Bad.")]}

BAD_ROWS = [  # adapter, good row, bad row, field, what the message says
    ("hh_rlhf", HH_GOOD, {"chosen": HH_GOOD["chosen"]}, "rejected", "missing"),
    ("hh_rlhf", HH_GOOD, {**HH_GOOD, "chosen": 7}, "chosen", "expected str, got int"),
    ("hh_rlhf", HH_GOOD, {**HH_GOOD, "chosen": f"\n\nHuman: {P}"}, "chosen",
     "no 'Assistant:' turn"),
    ("hh_rlhf", HH_GOOD, {**HH_GOOD, "chosen": "\n\nAssistant: Hi."}, "chosen", "no 'Human:' turn"),
    ("hh_rlhf", HH_GOOD, {**HH_GOOD, "chosen": "Hi" + HH_GOOD["chosen"]}, "chosen", "text before"),
    ("hh_rlhf", HH_GOOD, {**HH_GOOD, "chosen": HH_GOOD["chosen"] + "\n\nHuman: And?"}, "chosen",
     "ends on a 'Human:' turn"),
    ("hh_rlhf", HH_GOOD, {**HH_GOOD, "rejected": _hh("Explain snow to a 10-year-old.", "Bad.")},
     "rejected", "differs from 'chosen' before the final 'Assistant:' turn (at turn 0"),
    ("hh_rlhf", HH_GOOD, {**HH_GOOD, "rejected": _hh(P, "Bad.", _hh("Hi", "Hello"))}, "rejected",
     "differs from 'chosen'"),
    ("hh_rlhf", HH_GOOD, {**HH_GOOD, "rejected": HH_GOOD["chosen"]}, "rejected", "identical"),
    ("hh_rlhf", HH_GOOD, {"chosen": _hh(" ", "Good."), "rejected": _hh(" ", "Bad.")}, "chosen",
     "empty prompt"),
    ("hh_rlhf", HH_GOOD, {**HH_GOOD, "chosen": _hh(P, "  ")}, "chosen", "empty response"),
    ("ultrafeedback", UF_GOOD, {k: v for k, v in UF_GOOD.items() if k != "prompt"}, "prompt",
     "missing"),
    ("ultrafeedback", UF_GOOD, {**UF_GOOD, "chosen": "Good."}, "chosen", "expected list, got str"),
    ("ultrafeedback", UF_GOOD, {**UF_GOOD, "chosen": [_user(P), "Good."]}, "chosen",
     "message 1: expected {'role': str, 'content': str}"),
    ("ultrafeedback", UF_GOOD, {**UF_GOOD, "rejected": [_user("Explain snow."), _bot("Bad.")]},
     "rejected", "the user message differs from 'prompt'"),
    ("ultrafeedback", UF_GOOD, {**UF_GOOD, "chosen": [_bot("Good.")]}, "chosen",
     "expected roles ['user', 'assistant'], got ['assistant']"),
    ("ultrafeedback", UF_GOOD, {**UF_GOOD, "rejected": UF_GOOD["chosen"]}, "rejected", "identical"),
    ("ultrafeedback", UF_GOOD, {**UF_GOOD, "prompt": " ", "chosen": [_user(" "), _bot("Good.")],
     "rejected": [_user(""), _bot("Bad.")]}, "prompt", "empty prompt"),
    ("ultrafeedback", UF_GOOD, {**UF_GOOD, "score_rejected": 9.0}, "score_rejected", "higher"),
    ("ultrafeedback", UF_GOOD, {**UF_GOOD, "score_chosen": "8"}, "score_chosen",
     "expected a number, got str"),
    ("trl", TRL_GOOD, {k: v for k, v in TRL_GOOD.items() if k != "chosen"}, "chosen", "missing"),
    ("trl", TRL_GOOD, {**TRL_GOOD, "rejected": [_bot("Bad.")]}, "rejected",
     "expected str, got list"),
    ("trl", TRL_GOOD, {**TRL_GOOD, "prompt": 3}, "prompt", "expected str or a list of messages"),
    ("trl", TRL_GOOD, {**TRL_GOOD, "prompt": ""}, "prompt", "empty prompt"),
    ("trl", TRL_GOOD, {**TRL_GOOD, "chosen": "Bad."}, "rejected", "identical"),
    ("trl", TRL_GOOD, {**TRL_GOOD, "chosen": " "}, "chosen", "empty response"),
    ("trl", TRL_CONV, {**TRL_CONV, "prompt": [{"role": "system", "content": "Be kind."}, _user(P)]},
     "prompt", "expected one 'user' message, got roles ['system', 'user']"),
    ("trl", TRL_CONV, {**TRL_CONV, "chosen": [_bot("Good."), _bot("More.")]}, "chosen",
     "expected one 'assistant' message"),
    ("trl", TRL_CONV, {**TRL_CONV, "rejected": [{"role": "assistant"}]}, "rejected", "message 0"),
    ("trl", TRL_IMPLICIT, {"chosen": "Good.", "rejected": "Bad."}, "chosen",
     "implicit-prompt standard format has no separable prompt"),
    ("trl", TRL_IMPLICIT, {**TRL_IMPLICIT, "rejected": [_user("Explain snow."), _bot("Bad.")]},
     "rejected", "differs from 'chosen' before the final message"),
    ("trl", TRL_IMPLICIT, {"chosen": [_bot("Good.")], "rejected": [_bot("Bad.")]}, "chosen",
     "expected one 'user' message, got roles []"),
]  # fmt: skip


@pytest.mark.parametrize("fmt, good, bad, field, message", BAD_ROWS)
def test_bad_rows_name_source_row_and_field(fmt, good, bad, field, message):
    with pytest.raises(DataError) as err:
        ADAPTERS[fmt]([good, bad], source=f"{fmt} fixture")
    assert str(err.value).startswith(f"{fmt} fixture, row 1 (0-based), field {field!r}: ")
    assert message in str(err.value)


def test_message_reads_as_documented():
    with pytest.raises(DataError) as err:
        from_hh_rlhf([HH_GOOD] * 3 + [{**HH_GOOD, "chosen": "\n\nHuman: Hi"}], source="hh-rlhf fixture")
    assert str(err.value) == "hh-rlhf fixture, row 3 (0-based), field 'chosen': no 'Assistant:' turn"


def test_a_row_that_is_not_a_dict():
    with pytest.raises(DataError, match=r"rows, row 1 \(0-based\): expected a dict, got list"):
        from_trl([TRL_GOOD, ["a", "b"]])


# --- Format detection and to_course_pairs's own errors ------------------------------------------


@pytest.mark.parametrize(
    "row, fmt",
    [(HH_GOOD, "hh_rlhf"), (UF_GOOD, "ultrafeedback"), (TRL_GOOD, "trl"), (TRL_CONV, "trl"),
     (TRL_IMPLICIT, "trl"), ({"chosen": "Good.", "rejected": "Bad."}, "trl")],
)  # fmt: skip
def test_detect_format(row, fmt):
    assert detect_format(row) == fmt


def test_undetectable_first_row():
    with pytest.raises(DataError, match="field 'rejected': missing"):
        detect_format({"prompt": P, "chosen": "Good."})
    with pytest.raises(DataError, match=r"mine, row 0 \(0-based\), field 'chosen': missing"):
        to_course_pairs([{"prompt": P, "response": "Hi."}], source="mine")


def test_to_course_pairs_argument_errors():
    with pytest.raises(DataError, match="empty: no rows"):
        to_course_pairs([], source="empty")
    with pytest.raises(ValueError, match="fmt must be one of"):
        to_course_pairs([TRL_GOOD], fmt="csv")
    with pytest.raises(TypeError, match="pick a split"):
        to_course_pairs(datasets.DatasetDict({"train": datasets.Dataset.from_list([TRL_GOOD])}))
    # A format given explicitly wins over detection, and its adapter explains the mismatch.
    with pytest.raises(DataError, match=r"row 0 \(0-based\), field 'prompt': missing"):
        to_course_pairs([HH_GOOD], fmt="ultrafeedback")


def test_skip_malformed_rows_with_a_warning():
    good = {"prompt": "Explain rain to a 10-year-old.", "chosen": "Rain is water from clouds.", "rejected": "No."}
    same = {**good, "rejected": good["chosen"]}
    with pytest.raises(DataError):
        to_course_pairs([good, same], fmt="trl")
    with pytest.warns(UserWarning, match="skipped 1 malformed row"):
        ds = to_course_pairs([good, same, good], fmt="trl", errors="skip")
    assert len(ds) == 2
    with pytest.raises(ValueError, match="errors must be"):
        to_course_pairs([good], errors="ignore")
