"""Exports in the ecosystem's formats (rlhf_edu.export): what the course built loads in transformers
and datasets, and the reward model's scores survive the trip."""

from __future__ import annotations

import pytest
import torch

from rlhf_edu.batches import build_sft_batch
from rlhf_edu.export import (
    export_policy,
    export_preferences,
    export_reward_model,
    exported_scores,
    preference_dataset,
    reward_model_to_classifier,
)
from rlhf_edu.models import tiny_model_and_tokenizer
from rlhf_edu.reward import RewardModel, score_texts

PROMPTS = ["Explain rain to a 10-year-old.", "Explain a magnet to a 10-year-old."]
RESPONSES = ["Rain is water falling from clouds.", "A magnet pulls some metals toward it, like a hand."]


def tiny_reward_model():
    model, tok = tiny_model_and_tokenizer("llama", seed=3)
    torch.manual_seed(0)
    rm = RewardModel.from_causal_lm(model).eval()
    with torch.no_grad():
        rm.head.bias.fill_(0.3)
        rm.set_normalization(torch.tensor([0.5, -1.0, 2.0, 0.1]))  # gain and bias away from 1 and 0
    return rm, tok


def test_exported_reward_model_scores_equal_the_course(tmp_path):
    from transformers import AutoModelForSequenceClassification

    rm, tok = tiny_reward_model()
    course = score_texts(rm, tok, PROMPTS, RESPONSES)  # (2,)
    folder = export_reward_model(rm, tok, tmp_path / "rm")
    loaded = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    batch = build_sft_batch(tok, PROMPTS, RESPONSES)
    got = exported_scores(loaded, batch["input_ids"], batch["attention_mask"])
    assert got == pytest.approx(course.tolist(), abs=1e-5)
    assert loaded.config.score_offset == pytest.approx(float(rm.gain * rm.head.bias + rm.bias), abs=1e-6)


def test_the_classifier_differs_from_the_course_only_by_the_offset():
    rm, tok = tiny_reward_model()
    classifier, offset = reward_model_to_classifier(rm)
    batch = build_sft_batch(tok, PROMPTS, RESPONSES)
    with torch.no_grad():
        course = rm(batch["input_ids"], batch["attention_mask"])  # (2,)
    got = exported_scores(classifier, batch["input_ids"], batch["attention_mask"])
    assert (got - course).abs().max() < 1e-5 and offset != 0.0
    assert classifier.score.bias is None  # the transformers layout: the offset lives in the config


def test_exported_policy_loads_in_auto_classes_and_a_pipeline(tmp_path):
    from transformers import AutoModelForCausalLM, pipeline

    model, tok = tiny_model_and_tokenizer("llama", seed=1)
    folder = export_policy(model, tok, tmp_path / "policy")
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tok(PROMPTS[0], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model.eval()(ids).logits, atol=1e-6)
    generate = pipeline("text-generation", model=str(folder), device="cpu")
    out = generate([{"role": "user", "content": PROMPTS[0]}], max_new_tokens=3, do_sample=False)
    assert out[0]["generated_text"][-1]["role"] == "assistant"


def test_preferences_export_in_trl_format(tmp_path):
    import datasets

    rows = [{"prompt": p, "chosen": r, "rejected": "No.", "chosen_eos": True} for p, r in zip(PROMPTS, RESPONSES)]
    folder = export_preferences(rows, tmp_path / "prefs")
    loaded = datasets.load_from_disk(str(folder))
    assert loaded.column_names == ["prompt", "chosen", "rejected"] and loaded[1]["chosen"] == RESPONSES[1]
    with pytest.raises(ValueError, match="row 1 has no string rejected"):
        preference_dataset([rows[0], {"prompt": "x", "chosen": "y"}])
    with pytest.raises(ValueError, match="needs a hub token"):
        export_preferences(rows, tmp_path / "again", push_to="someone/prefs")
