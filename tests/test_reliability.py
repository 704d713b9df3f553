"""Reliability: the same seed gives the same run; a run interrupted (KeyboardInterrupt, SIGKILL) and
resumed ends where an uninterrupted one does; NaN or inf stops the run naming the quantity; bad
input (empty or too-long prompts, missing artifacts) is a clear error raised by rlhf_edu, not a
traceback from deep inside torch; a killed kernel loses no A/B judgement. Tiny models, one thread."""

import copy
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_ppo_loop import CountReward

import rlhf_edu.sft as sft_module
from rlhf_edu.batches import build_sft_batch
from rlhf_edu.checkpoints import save_checkpoint
from rlhf_edu.devices import DeviceSetup, device_setup
from rlhf_edu.dpo import DPOConfig, precompute_reference_logps, train_dpo
from rlhf_edu.generation import SamplingConfig, sample
from rlhf_edu.grpo_loop import GRPOConfig
from rlhf_edu.grpo_trainer import GRPOTrainer
from rlhf_edu.logprobs import per_token_logps
from rlhf_edu.models import load_model, setup_tokenizer, tiny_model_and_tokenizer, tiny_tokenizer
from rlhf_edu.ppo_loop import PPOConfig
from rlhf_edu.ppo_trainer import PPOTrainer
from rlhf_edu.reward import RewardConfig, RewardModel, score_texts
from rlhf_edu.reward_training import load_reward_model, train_reward_model
from rlhf_edu.sft import SFTConfig, train_sft

CPU = device_setup("cpu")  # this CPU's dtype rule, or RLHF_EDU_DTYPE
FP16_LIKE = DeviceSetup("cpu", None, True, "fp32 compute with a grad scaler, as fp16 autocast on a T4")
ROOT = Path(__file__).resolve().parents[1]
SFT_ROWS = [
    {"prompt": f"Explain thing {i} to a 10-year-old.", "response": f"Thing {i} is nice. It is fun."} for i in range(12)
]
SFT_CONFIG = {"max_steps": 6, "batch_size": 4, "n_heldout": 2, "eval_every": 2, "lr": 1e-3, "warmup_steps": 1}


def pairs(n: int, seed: int = 0) -> list[dict]:
    """Chosen responses are rich in 'a', rejected ones have none (the tiny tokenizer is per character)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        rejected = " ".join("".join(rng.choice("bcdefgh") for _ in range(4)) for _ in range(3))
        chosen = "".join("a" if c != " " and rng.random() < 0.7 else c for c in rejected)
        rows.append({"prompt": f"Say something {i}.", "chosen": chosen, "rejected": rejected})
    return rows


PAIRS = pairs(12)


@pytest.fixture(autouse=True)
def _threads():
    """One thread: the tiny models' ops are too small to split (overrides conftest)."""
    torch.set_num_threads(1)


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=0, atol=0, msg=k)


def tiny_tok():
    tok = tiny_tokenizer()
    setup_tokenizer(tok)
    return tok


def sft_run(seed: int = 0, model=None, **kwargs):
    """SFT with data seed `seed` of `model`, by default the tiny Llama of seed 0: -> (model, history)."""
    model = model or tiny_model_and_tokenizer("llama", seed=0)[0]
    tok = tiny_tok()
    history = train_sft(model, tok, SFT_ROWS, SFTConfig(**SFT_CONFIG, seed=seed), setup=CPU, progress=False, **kwargs)
    return model, history


def new_reward_model(seed: int = 0) -> tuple[RewardModel, object]:
    lm, tok = tiny_model_and_tokenizer("llama", seed=seed)
    torch.manual_seed(seed)
    return RewardModel.from_causal_lm(lm), tok


def rm_run(seed: int = 0, reward_model=None, **kwargs):
    """Reward-model training (12 pairs, batches of 5: 3 steps per pass, the last one of 2 pairs,
    so 7 steps cross two pass boundaries): -> (reward_model, history)."""
    rm, tok = new_reward_model() if reward_model is None else (reward_model, tiny_tok())
    config = RewardConfig(lr=3e-3, batch_size=5, max_steps=7, eval_every=3, seed=seed)
    return rm, train_reward_model(rm, tok, PAIRS, PAIRS[:4], config, setup=CPU, progress=False, **kwargs)


def ppo_trainer(seed: int = 0, steps: int = 3, policy_seed: int = 0) -> PPOTrainer:
    reference, tok = tiny_model_and_tokenizer("llama", seed=0)
    policy, _ = tiny_model_and_tokenizer("llama", seed=policy_seed)
    config = PPOConfig(
        steps=steps,
        batch_size=8,
        mini_batch_size=4,
        micro_batch_size=4,
        ppo_epochs=2,
        lr=3e-3,
        sampling=SamplingConfig(12, 1.0, 8),
        kl_coef=0.01,
        missing_eos_penalty=None,
        eval_every=1000,
        seed=seed,
    )
    return PPOTrainer(
        policy,
        reference,
        CountReward(tok.convert_tokens_to_ids("a")),
        tok,
        [f"question {i}" for i in range(24)],
        config,
        setup=CPU,
    )


def without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if not k.startswith("time/")} for h in history]


def raised_by_rlhf_edu(excinfo) -> bool:
    """The innermost frame of the traceback is library code, not torch or transformers."""
    return "rlhf_edu" in str(excinfo.traceback[-1].path)


# --------------------------------------------------------------------------- determinism


def run_stage(stage: str, seed: int) -> list[dict]:
    if stage == "sft":
        return sft_run(seed)[1]
    if stage == "reward model":
        return rm_run(seed)[1]
    return without_timings(ppo_trainer(seed).train(progress=False))


@pytest.mark.parametrize("stage", ["sft", "reward model", "ppo"])
def test_same_seed_same_metrics_other_seed_other_metrics(stage):
    """Two runs with one seed give the same metric history to the last bit on a CPU; another seed
    (data order, or PPO's sampling) gives another history, so the comparison can fail."""
    first, second = run_stage(stage, seed=0), run_stage(stage, seed=0)
    assert len(first) > 1 and first == second
    assert run_stage(stage, seed=1) != first


# --------------------------------------------------------------------------- interrupted runs


def test_sft_interrupted_mid_step_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch):
    """Ctrl-C during the forward pass of step 4 (checkpoints every 2 steps); the notebook cell is run
    again with the same, now partly trained, model object: same weights and history as a run that
    was never interrupted."""
    straight_model, straight = sft_run()
    real_loss, calls = sft_module.sft_batch_loss, []

    def interrupted(model, batch, *loss_mask):
        if model.training:  # training steps only, not the held-out evaluation
            calls.append(1)
            if len(calls) == 4:
                raise KeyboardInterrupt
        return real_loss(model, batch, *loss_mask)

    ckpt = tmp_path / "sft_ckpt"
    model, _ = tiny_model_and_tokenizer("llama", seed=0)
    monkeypatch.setattr(sft_module, "sft_batch_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sft_run(model=model, checkpoint_dir=ckpt, checkpoint_every=2)
    monkeypatch.undo()
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 2

    _, history = sft_run(model=model, checkpoint_dir=ckpt, checkpoint_every=2)
    assert history == straight
    assert_same_weights(model, straight_model)
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == SFT_CONFIG["max_steps"]


def test_reward_model_interrupted_resumes_in_a_fresh_model(tmp_path):
    """KeyboardInterrupt from the live plot after step 5 (checkpoints every 3 steps); a restarted
    kernel builds a reward model with other weights and resumes: the checkpoint overwrites them and
    the run ends as the uninterrupted one, including the head, gain and bias."""
    straight_rm, straight = rm_run()

    class InterruptingPlot:
        def __call__(self, step, record):
            if step == 5:
                raise KeyboardInterrupt

    ckpt = tmp_path / "rm_ckpt"
    with pytest.raises(KeyboardInterrupt):
        rm_run(on_step=InterruptingPlot(), checkpoint_dir=ckpt, checkpoint_every=3)
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 3
    loaded, _ = load_reward_model(ckpt)  # a checkpoint is a complete saved reward model
    assert all(torch.isfinite(p).all() for p in loaded.parameters())

    resumed_rm, _ = new_reward_model(seed=5)
    _, history = rm_run(reward_model=resumed_rm, checkpoint_dir=ckpt, checkpoint_every=3)
    assert history == straight
    assert_same_weights(resumed_rm, straight_rm)


def test_ppo_interrupted_mid_step_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch):
    """KeyboardInterrupt inside step 4's update, after its rollout (checkpoints every 2 steps); a
    fresh trainer whose policy has other weights loads the checkpoint and finishes the same run."""
    straight = ppo_trainer(steps=5)
    straight.train(progress=False)

    interrupted = ppo_trainer(steps=5)
    real_update = interrupted.update

    def update(rollout, generator):
        if interrupted.step_count == 3:
            raise KeyboardInterrupt
        return real_update(rollout, generator)

    monkeypatch.setattr(interrupted, "update", update)
    with pytest.raises(KeyboardInterrupt):
        interrupted.train(progress=False, checkpoint_dir=tmp_path / "ppo", checkpoint_every=2)

    resumed = ppo_trainer(steps=5, policy_seed=1)
    resumed.load_checkpoint(tmp_path / "ppo")
    assert resumed.step_count == 2
    resumed.train(progress=False)
    assert without_timings(resumed.history) == without_timings(straight.history)
    assert_same_weights(resumed.policy, straight.policy)
    assert torch.equal(resumed.value_head.weight, straight.value_head.weight)


GRPO_CONFIG = {
    "steps": 5,
    "prompts_per_step": 2,
    "group_size": 2,
    "mini_batch_size": 2,
    "micro_batch_size": 2,
    "epochs": 2,
    "lr": 3e-3,
    "sampling": SamplingConfig(6, 1.0, 4),
    "kl_coef": 0.01,
}


def letter_count(prompts, texts, eos):
    return torch.tensor([float(t.count("e")) for t in texts])


def grpo_trainer(policy_seed: int = 0, **overrides) -> GRPOTrainer:
    reference, tok = tiny_model_and_tokenizer("llama", seed=0)
    policy, _ = tiny_model_and_tokenizer("llama", seed=policy_seed)
    config = GRPOConfig(**{**GRPO_CONFIG, **overrides})
    return GRPOTrainer(policy, reference, letter_count, tok, ["q one", "q two", "q three"], config, setup=CPU)


def test_grpo_interrupted_mid_step_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch):
    """KeyboardInterrupt inside step 4's update (checkpoints every 2 steps); a fresh trainer whose
    policy has other weights calls `train` with the same folder and finishes the same run."""
    straight = grpo_trainer()
    straight.train(progress=False)

    interrupted = grpo_trainer()
    real_update = interrupted.update

    def update(rollout, generator):
        if interrupted.step_count == 3:
            raise KeyboardInterrupt
        return real_update(rollout, generator)

    monkeypatch.setattr(interrupted, "update", update)
    with pytest.raises(KeyboardInterrupt):
        interrupted.train(progress=False, checkpoint_dir=tmp_path / "grpo", checkpoint_every=2)
    assert json.loads((tmp_path / "grpo" / "trainer_state.json").read_text())["step"] == 2

    resumed, replayed = grpo_trainer(policy_seed=1), []
    resumed.train(progress=False, checkpoint_dir=tmp_path / "grpo", on_step=lambda s, m: replayed.append(s))
    assert replayed == [1, 2, 3, 4, 5]  # the past shows in the live plot too
    assert without_timings(resumed.history) == without_timings(straight.history)
    assert_same_weights(resumed.policy, straight.policy)
    with pytest.raises(ValueError, match=r"another config \(kl_coef differ"):
        grpo_trainer(kl_coef=0.02).train(progress=False, checkpoint_dir=tmp_path / "grpo")


def test_dpo_interrupted_resumes_in_a_fresh_policy(tmp_path):
    """KeyboardInterrupt from the live plot after step 5 of 6 (checkpoints every 2 steps); a restarted
    kernel starts from other weights and resumes: same weights and history as the uninterrupted
    run. Other reference log-probs refuse the checkpoint."""
    reference, tok = tiny_model_and_tokenizer("llama", seed=0)
    rows, config = pairs(12), DPOConfig(batch_size=4, epochs=2, lr=3e-3)
    ref = precompute_reference_logps(reference, tok, rows, config, setup=CPU)
    straight_policy = copy.deepcopy(reference)
    straight = train_dpo(straight_policy, ref, tok, rows, config, progress=False, setup=CPU)

    def interrupt_after_5(step, record):
        if step == 5:
            raise KeyboardInterrupt

    ckpt = tmp_path / "dpo"
    with pytest.raises(KeyboardInterrupt):
        train_dpo(copy.deepcopy(reference), ref, tok, rows, config, on_step=interrupt_after_5, progress=False,
                  setup=CPU, checkpoint_dir=ckpt, checkpoint_every=2)  # fmt: skip
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 4

    resumed, _ = tiny_model_and_tokenizer("llama", seed=3)
    history = train_dpo(resumed, ref, tok, rows, config, progress=False, setup=CPU, checkpoint_dir=ckpt)
    assert history == straight
    assert_same_weights(resumed, straight_policy)
    other_ref = {k: v + 1.0 for k, v in ref.items()}
    with pytest.raises(ValueError, match="trained on other rows"):
        train_dpo(resumed, other_ref, tok, rows, config, progress=False, setup=CPU, checkpoint_dir=ckpt)


KILLED_SFT = """
import sys, time
import torch
torch.set_num_threads(1)
from rlhf_edu.models import tiny_model_and_tokenizer
from rlhf_edu.devices import device_setup
from rlhf_edu.sft import SFTConfig, train_sft

class SlowPlot:  # a slow notebook: time for the parent to kill it mid-run
    def __call__(self, step, record):
        time.sleep(0.4)

model, tok = tiny_model_and_tokenizer("llama", seed=0)
train_sft(model, tok, {rows!r}, SFTConfig(**{config!r}), setup=device_setup("cpu"),
          on_step=SlowPlot(), progress=False, checkpoint_dir={ckpt!r}, checkpoint_every=1)
"""


def test_sigkill_mid_sft_run_then_resume_gives_a_valid_model(tmp_path, monkeypatch, sigkill_when):
    """A kernel running SFT is killed with SIGKILL after its second checkpoint; resuming here runs
    only the missing steps and finishes the run: the checkpoint loads as a model, its weights are
    finite, and they equal an uninterrupted run's."""
    ckpt = tmp_path / "sft_ckpt"
    script = KILLED_SFT.format(rows=SFT_ROWS, config=SFT_CONFIG, ckpt=str(ckpt))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)

    def two_checkpoints() -> bool:
        try:
            return json.loads((ckpt / "trainer_state.json").read_text())["step"] >= 2
        except (FileNotFoundError, json.JSONDecodeError):
            return False

    sigkill_when(proc, two_checkpoints, "the training process ended before it was killed")
    done = json.loads((ckpt / "trainer_state.json").read_text())["step"]
    assert 2 <= done < SFT_CONFIG["max_steps"]

    real_loss, steps_run = sft_module.sft_batch_loss, []
    monkeypatch.setattr(
        sft_module, "sft_batch_loss", lambda m, b, *mask: steps_run.append(m.training) or real_loss(m, b, *mask)
    )
    model, history = sft_run(checkpoint_dir=ckpt, checkpoint_every=1)
    monkeypatch.undo()
    assert sum(steps_run) == SFT_CONFIG["max_steps"] - done  # training forwards (not held-out ones)
    assert [h["step"] for h in history] == list(range(1, SFT_CONFIG["max_steps"] + 1))
    reloaded, _ = load_model(str(ckpt))
    assert all(torch.isfinite(p).all() for p in reloaded.parameters())
    assert_same_weights(reloaded, model)
    straight_model, straight = sft_run()
    assert history == straight
    assert_same_weights(model, straight_model)


def test_resume_refuses_another_config_other_data_or_a_foreign_folder(tmp_path):
    ckpt = tmp_path / "ckpt"
    sft_run(checkpoint_dir=ckpt)
    model, tok = tiny_model_and_tokenizer("llama", seed=0)
    with pytest.raises(ValueError, match=r"another config \(lr differ: \[0.001\] there, \[0.002\] now\)"):
        train_sft(
            model,
            tok,
            SFT_ROWS,
            SFTConfig(**{**SFT_CONFIG, "lr": 2e-3}),
            setup=CPU,
            progress=False,
            checkpoint_dir=ckpt,
        )
    with pytest.raises(ValueError, match="trained on other rows"):
        train_sft(model, tok, SFT_ROWS[:-1], SFTConfig(**SFT_CONFIG), setup=CPU, progress=False, checkpoint_dir=ckpt)
    with pytest.raises(ValueError, match="is not a reward model checkpoint"):
        rm_run(checkpoint_dir=ckpt)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holds files but no trainer_state.json"):
        sft_run(checkpoint_dir=tmp_path / "notes")
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"


def test_a_save_killed_between_its_renames_leaves_the_previous_checkpoint(tmp_path):
    """The window of a checkpoint swap: the previous checkpoint renamed to ckpt.old, the new one
    not yet in place. Resuming moves it back and repeats the lost steps."""

    class InterruptingPlot:
        def __call__(self, step, record):
            if step == 3:
                raise KeyboardInterrupt

    ckpt = tmp_path / "ckpt"
    straight_model, straight = sft_run()
    with pytest.raises(KeyboardInterrupt):
        sft_run(checkpoint_dir=ckpt, checkpoint_every=2, on_step=InterruptingPlot())
    ckpt.rename(tmp_path / "ckpt.old")
    model, history = sft_run(checkpoint_dir=ckpt)
    assert history == straight
    assert_same_weights(model, straight_model)
    assert (ckpt / "trainer_state.json").exists() and not (tmp_path / "ckpt.old").exists()


# --------------------------------------------------------------------------- NaN and inf


@pytest.mark.parametrize(("shift", "shown"), [(float("nan"), "nan"), (3e38, "inf")])
def test_sft_non_finite_loss_stops_with_the_quantity_named(monkeypatch, shift, shown):
    """Log-probs of NaN, or so negative that their sum overflows to -inf (the loss to +inf)."""
    monkeypatch.setattr(sft_module, "per_token_logps", lambda *a, **k: per_token_logps(*a, **k) - shift)
    with pytest.raises(FloatingPointError, match=rf"SFT loss \(train/loss\) is {shown} at step 0"):
        sft_run()


def inf_gradient_once(model: torch.nn.Module) -> None:
    """The first backward pass gives one parameter an inf gradient (an fp16 overflow)."""
    param, fired = next(p for p in model.parameters() if p.requires_grad), []

    def hook(grad):
        if fired:
            return grad
        fired.append(1)
        return torch.full_like(grad, float("inf"))

    param.register_hook(hook)


def test_non_finite_gradient_norm_stops_sft_and_the_reward_model():
    model, _ = tiny_model_and_tokenizer("llama", seed=0)
    inf_gradient_once(model)
    with pytest.raises(FloatingPointError, match=r"SFT step 0: the gradient norm \(train/grad_norm\) has 1 non-finite"):
        sft_run(model=model)
    rm, _ = new_reward_model()
    inf_gradient_once(rm)
    with pytest.raises(
        FloatingPointError, match=r"reward-model step 0: the gradient norm \(train/grad_norm\) has 1 non-finite"
    ):
        rm_run(reward_model=rm)


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")  # lr_scheduler.step() after a skipped step
@pytest.mark.filterwarnings("ignore:DPO step 0:UserWarning")  # zeros stand in for the reference log-probs
@pytest.mark.parametrize("stage", ["sft", "dpo", "grpo"])
def test_with_a_grad_scaler_an_overflow_skips_the_step_instead_of_stopping(stage):
    """fp16 autocast (a T4) overflows now and then: the grad scaler skips that optimizer step and
    lowers its scale, as torch.amp intends; the finite-gradient check must not stop the run there.
    Two optimizer steps: the first overflows, the second trains."""
    model, tok = tiny_model_and_tokenizer("llama", seed=0)
    reference = copy.deepcopy(model)
    before = params(model)
    inf_gradient_once(model)
    if stage == "sft":
        history = train_sft(
            model, tok, SFT_ROWS, SFTConfig(**{**SFT_CONFIG, "max_steps": 2}), setup=FP16_LIKE, progress=False
        )
        norms = [h["train/grad_norm"] for h in history]
    elif stage == "dpo":
        ref = {"chosen": torch.zeros(4), "rejected": torch.zeros(4)}
        history = train_dpo(
            model, ref, tok, pairs(4), DPOConfig(batch_size=2, max_steps=2, lr=1e-3), progress=False, setup=FP16_LIKE
        )
        norms = [h["train/grad_norm"] for h in history]
    else:
        config = GRPOConfig(
            steps=1,
            prompts_per_step=2,
            group_size=2,
            mini_batch_size=2,
            micro_batch_size=2,
            epochs=1,
            lr=1e-3,
            sampling=SamplingConfig(4, 1.0, 4),
        )
        trainer = GRPOTrainer(
            model,
            reference,
            lambda p, t, e: torch.tensor([float(sum(map(ord, x)) % 7) for x in t]),
            tok,
            ["q one", "q two"],
            config,
            setup=FP16_LIKE,
        )
        norms = [trainer.step()["policy/grad_norm"], 0.0]  # the mean over both steps: inf
    assert [n == float("inf") for n in norms] == [True, False]
    assert any(not torch.equal(before[k], v) for k, v in params(model).items())  # the second step trained
    assert all(torch.isfinite(v).all() for v in params(model).values())


def test_inf_stops_dpo_and_grpo_like_nan():
    reference, tok = tiny_model_and_tokenizer("llama", seed=0)
    ref = {"chosen": torch.full((4,), float("inf")), "rejected": torch.zeros(4)}
    with pytest.raises(FloatingPointError, match="DPO step 0: the DPO loss has 1 non-finite value"):
        train_dpo(copy.deepcopy(reference), ref, tok, pairs(4), DPOConfig(batch_size=4), progress=False, setup=CPU)
    config = GRPOConfig(
        steps=1,
        prompts_per_step=2,
        group_size=2,
        mini_batch_size=4,
        micro_batch_size=4,
        sampling=SamplingConfig(4, 1.0, 4),
    )
    trainer = GRPOTrainer(
        copy.deepcopy(reference),
        reference,
        lambda p, t, e: torch.full((len(t),), float("inf")),
        tok,
        ["q one", "q two"],
        config,
        setup=CPU,
    )
    with pytest.raises(FloatingPointError, match="GRPO step 0: the reward_fn scores"):
        trainer.step()


# --------------------------------------------------------------------------- bad input


def test_empty_prompts_are_named_by_index(tiny):
    model, tok = tiny
    cfg = SamplingConfig(max_new_tokens=2, batch_size=2)
    with pytest.raises(ValueError, match=r"prompt 2 must be a non-empty string, got '  '") as err:
        sample(model, tok, ["ok", "fine", "  "], cfg)  # in the second batch: the index is global
    assert raised_by_rlhf_edu(err)
    with pytest.raises(ValueError, match="got no prompts"):
        sample(model, tok, [], cfg)
    rm = RewardModel.from_causal_lm(model)
    with pytest.raises(ValueError, match="prompt 17 must be a non-empty string, got ''"):
        score_texts(rm, tok, ["q"] * 17 + [""], ["a"] * 18, batch_size=4)


def test_prompts_longer_than_the_context_are_named_with_their_length(tiny):
    """The tiny models have 512 positions; the tokenizer is per character, plus the chat template."""
    model, tok = tiny
    limit = model.config.max_position_embeddings
    assert limit == 512
    long = "x" * 600
    with pytest.raises(
        ValueError,
        match=r"prompt 1 is \d+ tokens and max_new_tokens is 8: \d+ positions, more "
        r"than the model's context of 512 tokens",
    ) as err:
        sample(model, tok, ["short", long], SamplingConfig(max_new_tokens=8))
    assert raised_by_rlhf_edu(err)
    fits_alone = "x" * 480  # fits, but not with 64 new tokens after it
    with pytest.raises(ValueError, match="max_new_tokens is 64"):
        sample(model, tok, [fits_alone], SamplingConfig(max_new_tokens=64))

    batch = build_sft_batch(tok, ["hi", "a prompt"], ["ok", "y" * 600], max_response_tokens=1000)
    with pytest.raises(ValueError, match=r"row 1 is \d+ tokens, more than the model's context of 512") as err:
        per_token_logps(model, batch["input_ids"], batch["attention_mask"], batch["context_length"])
    assert raised_by_rlhf_edu(err)
    rm = RewardModel.from_causal_lm(model)
    with pytest.raises(ValueError, match=r"prompt \+ response 5 is \d+ tokens, more than the model's context"):
        score_texts(rm, tok, ["q"] * 6, ["ok"] * 5 + ["y" * 600], batch_size=4, max_response_tokens=1000)


def test_missing_artifacts_name_the_folder_the_file_and_the_notebook(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"no saved model at .*artifacts/sft: the folder does not exist "
        r"\(notebook 01_sft.ipynb writes it",
    ):
        load_model(str(tmp_path / "artifacts" / "sft"))
    with pytest.raises(FileNotFoundError, match=r"artifacts/ppo/policy.*04_ppo.ipynb"):
        load_model(str(tmp_path / "artifacts" / "ppo" / "policy"))
    with pytest.raises(FileNotFoundError, match=r"artifacts/reward_model.*03_reward_model.ipynb"):
        load_reward_model(tmp_path / "artifacts" / "reward_model")

    # Complete folders, then each loses one file, as after an interrupted save or a careless delete.
    model, tok = tiny_model_and_tokenizer()
    save_checkpoint(model, tok, tmp_path / "artifacts" / "dpo")
    (tmp_path / "artifacts" / "dpo" / "model.safetensors").unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"artifacts/dpo is incomplete: model.safetensors or "
        r"model.safetensors.index.json is missing.*06_dpo_grpo.ipynb",
    ) as err:
        load_model(str(tmp_path / "artifacts" / "dpo"))
    assert raised_by_rlhf_edu(err)
    from rlhf_edu.reward_training import HEAD_FILE, save_reward_model

    save_reward_model(RewardModel.from_causal_lm(model), tok, tmp_path / "artifacts" / "reward_model")
    (tmp_path / "artifacts" / "reward_model" / HEAD_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{HEAD_FILE} is missing.*03_reward_model.ipynb"):
        load_reward_model(tmp_path / "artifacts" / "reward_model")

    ckpt = tmp_path / "ckpt"
    sft_run(checkpoint_dir=ckpt)
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"ckpt is incomplete: model.safetensors .*delete the checkpoint folder"
    ):
        sft_run(checkpoint_dir=ckpt)


# --------------------------------------------------------------------------- killed kernel mid-judging


def test_every_ab_judgement_survives_sigkill(tmp_path, sigkill_when):
    """The A/B evaluator of notebook 07 shares the labeler's store: a kernel killed between clicks
    loses none, and the restarted evaluator resumes at the next item with the same results."""
    path, ready = tmp_path / "ab.jsonl", tmp_path / "ready"
    script = textwrap.dedent(f"""
        import pathlib, time
        from rlhf_edu.ab_eval import ABEvaluator
        n = 20
        ev = ABEvaluator([f"q{{i}}" for i in range(n)], [f"x{{i}}" for i in range(n)],
                         [f"y{{i}}" for i in range(n)], {str(path)!r}, names=("sft", "ppo"), min_interval=0)
        for choice in ["A", "B", "tie", "A", "skip", "B", "A"]:
            ev.buttons[choice].click()
        pathlib.Path({str(ready)!r}).write_text(str(ev.results()))
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)})
    sigkill_when(proc, ready.exists, "the child did not get to the clicks")

    from rlhf_edu.ab_eval import ABEvaluator

    n = 20
    again = ABEvaluator(
        [f"q{i}" for i in range(n)],
        [f"x{i}" for i in range(n)],
        [f"y{i}" for i in range(n)],
        path,
        names=("sft", "ppo"),
        min_interval=0,
    )
    assert again.position == 7 and again.progress_text.value == "7 / 20"
    assert str(again.results()) == ready.read_text()
    assert again.results()["n"] == 6 and again.results()["skipped"] == 1
