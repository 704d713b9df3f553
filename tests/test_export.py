"""Exports in the ecosystem's formats (rlhf_edu.export): what the course built loads in transformers
and datasets, and the reward model's scores survive the trip."""

from __future__ import annotations

import itertools

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


def test_openrlhf_command_names_every_ppo_setting_with_the_engines_flag(tmp_path):
    """Every setting of the course's PPO (and its sampling) has an OpenRLHF name or a stated reason
    why none exists, and the command carries each named one with the course's value."""
    import dataclasses

    from rlhf_edu.export import OPENRLHF_NAMES, export_prompts, openrlhf_ppo_command
    from rlhf_edu.ppo_loop import PPOConfig
    from rlhf_edu.presets import get_preset

    config = get_preset("cpu").ppo
    names = {f.name for f in dataclasses.fields(PPOConfig) if f.name != "sampling"}
    names |= {f"sampling.{f.name}" for f in dataclasses.fields(config.sampling)}
    assert names == set(OPENRLHF_NAMES)
    assert all(flag or reason for flag, reason in OPENRLHF_NAMES.values())
    prompts = export_prompts(["Explain rain to a 10-year-old."], tmp_path / "prompts.jsonl")
    command = openrlhf_ppo_command(config, tmp_path / "policy", tmp_path / "rm", prompts, eval_prompts_path=prompts)
    flags = dict(itertools.pairwise(command))  # each flag with the word after it
    assert command[:3] == ["python", "-m", "openrlhf.cli.train_ppo_ray"]
    assert flags["--init_kl_coef"] == str(config.kl_coef) and flags["--eps_clip"] == str(config.clip_range)
    assert flags["--lambd"] == str(config.lam) and flags["--max_epochs"] == str(config.ppo_epochs)
    assert flags["--max_samples"] == str(config.steps * config.batch_size)
    assert flags["--temperature"] == str(config.sampling.temperature)
    assert flags["--generate_max_len"] == str(config.sampling.max_new_tokens)
    assert flags["--reward_pretrain"] == str(tmp_path / "rm") and flags["--input_key"] == "prompt"
    assert flags["--eval_steps"] == str(config.eval_every)
    assert flags["--critic_pretrain"] == str(tmp_path / "rm") and flags["--seed"] == str(config.seed)
    for name, (flag, _) in OPENRLHF_NAMES.items():
        value = getattr(config.sampling, name[9:]) if name.startswith("sampling.") else getattr(config, name)
        assert (flag in command) == (flag is not None and value is not None), name
    with pytest.raises(ValueError, match="no OpenRLHF name"):
        openrlhf_ppo_command(_with_extra_field(config), "p", "r", prompts)
    assert [__import__("json").loads(line) for line in prompts.read_text().splitlines()] == [
        {"prompt": "Explain rain to a 10-year-old."}
    ]


def _with_extra_field(config):
    import dataclasses

    extended = dataclasses.make_dataclass("Extended", [("new_setting", int, 1)], bases=(type(config),), frozen=True)
    return extended(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)})


def test_exported_reward_model_loads_through_the_classes_engines_use(tmp_path):
    """OpenRLHF and verl read a reward model with AutoConfig and AutoModel (the transformer) plus the
    `score` weight of the classifier's checkpoint: all three are in the exported folder."""
    import json

    from safetensors import safe_open
    from transformers import AutoConfig, AutoModel

    rm, tok = tiny_reward_model()
    folder = export_reward_model(rm, tok, tmp_path / "rm")
    config = AutoConfig.from_pretrained(folder)
    assert config.num_labels == 1 and hasattr(config, "score_offset")
    AutoModel.from_pretrained(folder)  # the backbone alone
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert "score.weight" in f.keys()  # noqa: SIM118 (a safetensors handle, not a dict)
        assert torch.allclose(f.get_tensor("score.weight"), (rm.gain * rm.head.weight).float(), atol=1e-6)
    assert json.loads((folder / "config.json").read_text())["architectures"][0].endswith("ForSequenceClassification")
