"""The pipeline at scale (rlhf_edu.scale): the course's configs translate to TRL's, and what the course
trains and exports runs through TRL's reward, DPO, GRPO and RLOO trainers on CPU."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

pytest.importorskip("trl", reason="TRL is in the `scale` extra, which make test installs")

from rlhf_edu import scale
from rlhf_edu.dpo import DPOConfig
from rlhf_edu.grpo_loop import GRPOConfig
from rlhf_edu.presets import get_preset
from rlhf_edu.reward import RewardConfig

PROMPTS = ["Explain rain to a 10-year-old.", "Explain a magnet to a 10-year-old."]


@pytest.mark.parametrize(
    ("stage", "config"), [("reward", RewardConfig), ("dpo", DPOConfig), ("grpo", GRPOConfig), ("rloo", GRPOConfig)]
)
def test_every_course_setting_has_a_trl_name_or_a_reason(stage, config):
    assert set(scale.TRL_NAMES[stage]) == {f.name for f in dataclasses.fields(config)}
    assert all(isinstance(v, str) and v for v in scale.TRL_NAMES[stage].values())


def test_grpo_settings_translate(tmp_path):
    config = dataclasses.replace(get_preset("cpu").final.grpo, advantage="grpo", epochs=2)
    args = scale.grpo_args(config, tmp_path)
    # cpu: 8 prompts x 4 answers = 32 per step, minibatches of 8 -> 4 optimizer steps a step, twice.
    assert args.num_generations == 4 and args.generation_batch_size == 32
    assert args.per_device_train_batch_size == 8 and args.gradient_accumulation_steps == 1
    assert args.max_steps == 8 * 4 * 2 and args.num_iterations == 2
    assert args.beta == config.kl_coef and args.epsilon == config.clip_range
    assert args.temperature == 1.0 and args.max_completion_length == 64
    assert args.loss_type == "grpo" and args.scale_rewards == "group" and args.learning_rate == config.lr
    dr = scale.grpo_args(dataclasses.replace(config, advantage="dr_grpo"), tmp_path)
    assert dr.loss_type == "dr_grpo" and dr.scale_rewards == "none"
    with pytest.raises(ValueError, match="use rloo_args"):
        scale.grpo_args(dataclasses.replace(config, advantage="rloo"), tmp_path)
    rloo = scale.rloo_args(dataclasses.replace(config, advantage="rloo"), tmp_path)
    assert rloo.normalize_advantages is False and rloo.num_generations == 4


@pytest.mark.parametrize(("dtype", "bf16"), [("bf16", True), ("fp32", False)])
def test_trl_computes_in_the_courses_dtype(monkeypatch, tmp_path, dtype, bf16):
    # Notebook 08 compares TRL's runs with the course's: both in the dtype device_setup picks.
    monkeypatch.setenv("RLHF_EDU_DTYPE", dtype)
    config = get_preset("cpu").final
    for args in (scale.dpo_args(config.dpo, tmp_path), scale.grpo_args(config.grpo, tmp_path)):
        assert args.bf16 is bf16 and args.fp16 is False
        assert args.use_cpu is not torch.cuda.is_available()


def test_pairs_become_conversational():
    from rlhf_edu.export import preference_dataset

    pairs = scale.conversational_pairs(
        preference_dataset([{"prompt": PROMPTS[0], "chosen": "Rain falls.", "rejected": "No."}])
    )
    assert pairs[0]["prompt"] == [{"role": "user", "content": PROMPTS[0]}]
    assert pairs[0]["chosen"] == [{"role": "assistant", "content": "Rain falls."}]
    with pytest.raises(ValueError, match="no column rejected"):
        scale.conversational_pairs(
            preference_dataset([{"prompt": "p", "chosen": "c", "rejected": "r"}]).remove_columns("rejected")
        )


def test_text_reward_tells_cut_off_answers_apart():
    seen = {}

    def fn(prompts, texts, eos):
        seen.update(prompts=prompts, texts=texts, eos=eos)
        return torch.tensor([1.0, 2.0])

    reward = scale.text_reward(fn, eos_token_id=2)
    out = reward(
        prompts=[[{"role": "user", "content": "p1"}], [{"role": "user", "content": "p2"}]],
        completions=[[{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}]],
        completion_ids=[[5, 6, 2], [5, 6, 7]],
    )
    assert out == [1.0, 2.0] and seen == {"prompts": ["p1", "p2"], "texts": ["a", "b"], "eos": [True, False]}


def test_accelerate_configs_ship():
    assert "MULTI_GPU" in scale.accelerate_config("multi_gpu").read_text()
    assert "zero_stage: 2" in scale.accelerate_config("zero2").read_text()
    with pytest.raises(ValueError, match="no accelerate config 'zero9'"):
        scale.accelerate_config("zero9")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny policy and reward model trained by the course, exported as notebooks 02, 03 and 07 do."""
    from rlhf_edu.export import export_policy, export_preferences, export_prompts, export_reward_model
    from rlhf_edu.models import tiny_model_and_tokenizer
    from rlhf_edu.reward import RewardModel
    from rlhf_edu.reward_training import train_reward_model

    out = tmp_path_factory.mktemp("exported")
    answers = [("It is like a bath for the sky.", "Rain."), ("You feel it pull like a hand.", "Magnet.")]
    rows = [
        {"prompt": p, "chosen": c, "rejected": r, "chosen_eos": True, "rejected_eos": True}
        for p, (c, r) in zip(PROMPTS * 4, answers * 4)
    ]
    policy, tokenizer = tiny_model_and_tokenizer("llama", seed=0)
    backbone, _ = tiny_model_and_tokenizer("llama", seed=0)
    reward_model = RewardModel.from_causal_lm(backbone)
    history = train_reward_model(
        reward_model, tokenizer, rows, rows[:2], RewardConfig(lr=1e-3, batch_size=4, max_steps=2), progress=False
    )
    assert len(history) == 2
    return {
        "pairs": export_preferences(rows, out / "preferences"),
        "reward_model": export_reward_model(reward_model.eval(), tokenizer, out / "reward_model"),
        "policy": export_policy(policy, tokenizer, out / "policy"),
        "prompts": export_prompts(PROMPTS * 2, out / "prompts.jsonl"),
        "tokenizer": tokenizer,
    }


def _changed(trainer, before: dict) -> bool:
    return any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items() if k in before)


@pytest.mark.parametrize("stage", scale.STAGES)
def test_exported_artifacts_train_on_trls_trainers(stage, exported, tmp_path):
    import datasets
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from rlhf_edu.reward_functions import rubric_reward

    smoke = get_preset("smoke")
    tokenizer = exported["tokenizer"]
    out = tmp_path / stage
    if stage == "reward":
        args = scale.reward_args(smoke.reward, out, max_steps=2)
        model = AutoModelForSequenceClassification.from_pretrained(exported["policy"], num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
        kwargs = {"pairs": datasets.load_from_disk(exported["pairs"])}
    elif stage == "dpo":
        args = scale.dpo_args(smoke.final.dpo, out, max_steps=2)
        model = AutoModelForCausalLM.from_pretrained(exported["policy"])
        kwargs = {"pairs": datasets.load_from_disk(exported["pairs"])}
    else:
        grpo = dataclasses.replace(smoke.final.grpo, advantage=stage)
        build = scale.grpo_args if stage == "grpo" else scale.rloo_args
        args = build(grpo, out, max_steps=1)
        model = AutoModelForCausalLM.from_pretrained(exported["policy"])
        # GRPO is paid by the exported reward model, RLOO by the rubric as a plain function of text.
        reward = (
            str(exported["reward_model"])
            if stage == "grpo"
            else scale.text_reward(rubric_reward, tokenizer.eos_token_id)
        )
        kwargs = {"prompts": PROMPTS * 2, "reward": reward}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = scale.trainer(stage, model, tokenizer, args, **kwargs)
    result = trainer.train()
    assert trainer.state.global_step == args.max_steps
    assert math.isfinite(result.training_loss)
    assert _changed(trainer, before), f"{stage}: no weight moved"
    trainer.save_model(str(out))
    reloaded = (AutoModelForSequenceClassification if stage == "reward" else AutoModelForCausalLM).from_pretrained(out)
    assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in model.parameters())


def test_command_line_runs_a_stage_on_exported_folders(exported, tmp_path, capsys):
    out = tmp_path / "dpo"
    argv = ["dpo", "--model", str(exported["policy"]), "--data", str(exported["pairs"]), "--out", str(out)]
    assert scale.main([*argv, "--preset", "smoke", "--max-steps", "1"]) == 0
    assert (out / "config.json").exists() and f"saved the dpo model in {out}" in capsys.readouterr().out
    assert scale.main(["accelerate-config", "zero2"]) == 0
    assert capsys.readouterr().out.strip().endswith("zero2.yaml")
    with pytest.raises(SystemExit, match="grpo needs --reward-model and --prompts"):
        scale.main(["grpo", "--model", str(exported["policy"]), "--out", str(tmp_path / "g")])
