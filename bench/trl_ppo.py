"""PPO seconds per step: rlhf_edu's PPOTrainer against TRL's (`trl.experimental.ppo`, trl==1.8.0).

Method. One process, one thread budget, the same SFT policy, reference and reward model
(artifacts/sft and artifacts/reward_model at the cpu preset), the same PPO settings (the cpu
preset's when this was measured: 16 prompts per rollout, minibatches of 8, 4 epochs, 64 new tokens at T = 1.0, lr 1e-4
decayed linearly to 0 over the steps run, kl_coef 0.05, top 8 of 30 blocks trainable) and the
same prompt batch at every step (TRL's shuffled dataloader is replaced by one that yields our
`prompts_for_step` batches in order). Runs, in this order: ours with the course's default critic
(a shared value head), TRL, ours with `critic="reward_model"` (TRL's layout: a separate value
network initialized from the reward model), so a drift in the machine's load falls on both sides
of TRL. Each run starts from a fresh copy of the SFT policy and runs `steps` PPO steps; seconds
per step is the MEAN over steps 2..N (step 1 includes warm-up; every step's time is kept). Each
final policy (and the SFT policy) then answers the same eval prompts with the same seed through
the course's evaluator: gold rubric, reward-model score, KL to the SFT policy.

TRL reads a reward or value model as an AutoModelForSequenceClassification: `get_reward` runs
`getattr(model, model.base_model_prefix)` and `model.score` at every position.
`to_sequence_classifier` builds one from our RewardModel: the same backbone, and a Linear(H, 1)
WITH a bias into which the normalization is folded (weight = gain * w, bias = gain * b + bias),
so its scores equal ours to float precision (tests/test_bench_trl.py). The constant does matter:
TRL whitens the advantages, not the scores, and GAE spreads a constant terminal reward unevenly
over the tokens; it is kept, not dropped.

Run with the bench environment (make bench-env): `.venv-bench/bin/python bench/trl_ppo.py`.
Absolute seconds move with the machine's load; compare the columns of one run. One run of `make bench`
on the course's 2-core machine (3 steps, 2 threads, 438 s for this script): s/step ours 21.0, ours
with full forwards 23.0, ours with critic="reward_model" 26.6, TRL 30.0 (1.43x, 1.30x, 1.12x); gold on
32 eval prompts 0.954, 0.954, 0.969, 0.973 (SFT 0.943).
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time

import torch

TRL_VERSION = "1.8.0"
OURS = {"shared": "rlhf_edu", "reward_model": "rlhf_edu_rm_critic", "shared_full": "rlhf_edu_full_forwards"}
"""Our runs: the default (shared value head, frozen trunk computed once per rollout), the separate
critic of TRL's layout, and the default with full forwards (`rlhf_edu.trunk` switched off)."""

UNMATCHED = [
    (
        "critic: ours by default a zero-initialized value head on the policy (one forward and backward "
        "for both losses); TRL a separate value model (the reward model's weights, top 8 blocks "
        "trainable), the layout of our critic='reward_model' (rlhf_edu_rm_critic)"
    ),
    "gradient clipping: ours at global norm 1.0; TRL's PPO loop never clips (max_grad_norm unused)",
    "optimizer: ours torch Adam; TRL the Trainer's AdamW (adamw_torch_fused), weight decay 0, eps 1e-5",
    (
        "old log-probs: ours recomputed by the training forward (one more forward per rollout, first "
        "ratio exactly 1); TRL's from generate's scores"
    ),
    (
        "sampling: ours a KV-cached loop, TRL model.generate (top_k 0, top_p 1, the same T + 1e-7): the "
        "same distribution, different random draws"
    ),
    (
        "rollout forwards: ours sample 16 at a time, no-grad forwards 8 at a time; TRL both 16 at a "
        "time (local_rollout_forward_batch_size)"
    ),
    "padding: ours trims all-padding columns per micro-batch; TRL forwards the full width",
    (
        "score placement: ours on the last response token (EOS); TRL on the pad slot after it, which "
        "its value loss also covers"
    ),
    "pad detection: TRL by token id (a sampled <|endoftext|> counts as padding); ours by masks",
    "logging: TRL computes the full-vocabulary entropy of every micro-batch",
]


def to_sequence_classifier(reward_model: torch.nn.Module) -> torch.nn.Module:
    """Our RewardModel as an AutoModelForSequenceClassification (num_labels 1) for TRL, in memory
    (`export.reward_model_to_classifier`), with the offset the saved layout cannot hold put back as
    the score layer's bias, so TRL is paid exactly our scores. The reward model is not changed."""
    from rlhf_edu.export import reward_model_to_classifier

    model, offset = reward_model_to_classifier(reward_model)
    weight = model.score.weight  # (1, H)
    model.score = torch.nn.Linear(weight.shape[1], 1, bias=True, device=weight.device)
    with torch.no_grad():
        model.score.weight.copy_(weight)
        model.score.bias.fill_(offset)
    return model.eval()


def _require_trl() -> tuple:
    try:
        import trl
        from trl.experimental.ppo import PPOConfig, PPOTrainer
    except ImportError as err:
        raise RuntimeError(
            f"TRL is not importable in this Python ({err}). The comparison runs in the bench "
            f"environment: run `make bench-env`, then `.venv-bench/bin/python bench/trl_ppo.py`."
        ) from err
    if trl.__version__ != TRL_VERSION:
        raise RuntimeError(f"bench/trl_ppo.py compares against trl=={TRL_VERSION}, found {trl.__version__}")
    return PPOConfig, PPOTrainer


def _count_optimizer_steps(optimizer: torch.optim.Optimizer) -> list[int]:
    """[optimizer steps so far, trainable parameters]: the first entry counts up."""
    counter = [0, sum(p.numel() for group in optimizer.param_groups for p in group["params"])]
    optimizer.register_step_post_hook(lambda *_: counter.__setitem__(0, counter[0] + 1))
    return counter


def train_ours(
    sft, reward_model, tokenizer, prompts: list[str], config, setup, steps: int, trunk: bool = True
) -> tuple:
    """`steps` PPO steps of rlhf_edu from a copy of `sft`: -> (policy, step seconds, trainer,
    [optimizer steps, trainable parameters], per-step [score after the EOS penalty, KL]).
    trunk=False runs full forwards (no frozen-trunk reuse)."""
    from rlhf_edu.ppo_trainer import PPOTrainer

    policy = copy.deepcopy(sft)
    trainer = PPOTrainer(policy, sft, reward_model, tokenizer, prompts, config, setup=setup)
    trainer.trunk.enabled = trunk and trainer.trunk.enabled
    counter = _count_optimizer_steps(trainer.optimizer)
    for _ in range(steps):
        trainer.step()
    curve = [[h["objective/score_penalized"], h["objective/kl"]] for h in trainer.history]
    return policy, [h["time/step_s"] for h in trainer.history], trainer, counter, curve


def train_trl(
    sft, reward_model, tokenizer, batches: list[list[str]], config, out_dir: str, progress: bool = False
) -> tuple:
    """One TRL PPO step per prompt batch from a copy of `sft`: -> (policy, step seconds,
    [optimizer steps, trainable parameters], per-step [score after the EOS penalty, KL])."""
    from datasets import Dataset
    from torch.utils.data import DataLoader
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from rlhf_edu.generation import chat_prompt
    from rlhf_edu.training import freeze_lower_layers

    TRLConfig, TRLTrainer = _require_trl()
    policy = copy.deepcopy(sft)
    freeze_lower_layers(policy, config.trainable_layers)  # TRL's optimizer takes the trainable ones
    value_model = to_sequence_classifier(reward_model)  # as TRL's examples: the value model from the RM
    freeze_lower_layers(value_model, config.trainable_layers)
    scorer = to_sequence_classifier(reward_model).requires_grad_(False)
    prompts = [p for batch in batches for p in batch]
    ids = [tokenizer(chat_prompt(tokenizer, p), add_special_tokens=False).input_ids for p in prompts]
    dataset = Dataset.from_dict({"input_ids": ids})
    s = config.sampling
    args = TRLConfig(
        output_dir=out_dir,
        seed=config.seed,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        num_sample_generations=0,
        bf16=False,
        fp16=False,  # TRL's default is bf16; ours fp32 here
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=1,
        num_mini_batches=config.batch_size // config.mini_batch_size,
        num_ppo_epochs=config.ppo_epochs,
        total_episodes=len(prompts),
        local_rollout_forward_batch_size=s.batch_size,
        response_length=s.max_new_tokens,
        temperature=s.temperature,
        stop_token="eos",
        missing_eos_penalty=config.missing_eos_penalty,
        kl_coef=config.kl_coef,
        kl_estimator="k1",
        cliprange=config.clip_range,
        cliprange_value=config.clip_range_value,
        vf_coef=config.vf_coef,
        gamma=config.gamma,
        lam=config.lam,
        whiten_rewards=config.whiten_rewards,
        learning_rate=config.lr,
        adam_epsilon=config.adam_eps,
        weight_decay=0.0,
        lr_scheduler_type="linear",
        max_grad_norm=config.max_grad_norm,
        dataloader_num_workers=0,
    )

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.marks: list[float] = []
            self.curve: list[list[float]] = []

        def on_log(self, args, state, control, logs=None, **k):
            if logs and "objective/scores" in logs:
                self.curve.append([logs["objective/scores"], logs["objective/kl"]])

        def on_train_begin(self, *a, **k):
            self.marks = [time.perf_counter()]

        def on_step_end(self, *a, **k):
            self.marks.append(time.perf_counter())

    timer = StepTimer()
    trainer = TRLTrainer(
        args=args,
        processing_class=tokenizer,
        model=policy,
        ref_model=sft,
        reward_model=scorer,
        train_dataset=dataset,
        value_model=value_model,
        callbacks=[timer],
    )
    if not progress:
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
    # our prompt batches, in our order (TRL's own dataloader shuffles)
    trainer.dataloader = DataLoader(
        dataset, batch_size=config.batch_size, shuffle=False, collate_fn=trainer.data_collator, drop_last=True
    )
    counter = _count_optimizer_steps(getattr(trainer.optimizer, "optimizer", trainer.optimizer))
    trainer.train()
    return policy, [b - a for a, b in zip(timer.marks, timer.marks[1:])], counter, timer.curve


def evaluate(model, tokenizer, prompts, sampling, sft, reward_model) -> dict[str, list]:
    """Per-prompt gold, RM score, KL to `sft` and length of `model`'s answers (seed 0)."""
    from rlhf_edu.metrics import evaluate_policy

    model.eval()
    rows = evaluate_policy(model, tokenizer, prompts, sampling, seed=0, reference=sft, reward_model=reward_model)
    return {k: [r[k] for r in rows] for k in ("gold", "rm", "kl", "tokens")}


def run(
    steps: int = 3,
    n_eval: int = 32,
    critics: tuple[str, ...] = ("shared", "reward_model"),
    preset: str = "cpu",
    progress: bool = False,
) -> dict:
    """Time `steps` PPO steps of ours (one run per critic in `critics`) and of TRL, then evaluate.

    Returns {ppo_speedup_vs_trl, seconds_per_step, step_seconds, gold, rm_score, kl, ...}; see the
    module docstring for the method. Raises RuntimeError when TRL is not importable.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    _require_trl()  # fail before minutes of work
    import dataclasses
    from types import SimpleNamespace

    import transformers
    import trl

    from rlhf_edu.data import eval_prompts, load_concepts, make_prompt
    from rlhf_edu.devices import device_setup
    from rlhf_edu.metrics import paired_difference
    from rlhf_edu.ppo_trainer import PPOTrainer
    from rlhf_edu.presets import get_preset
    from rlhf_edu.reward_training import load_or_train_reward_model
    from rlhf_edu.sft import load_or_train_sft

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    start = time.perf_counter()
    p = get_preset(preset)
    setup = device_setup()
    sft, tok, sft_source = load_or_train_sft(p, setup, progress=False)
    reward_model, rm_source = load_or_train_reward_model(p, sft, tok, setup, progress=False)
    train_prompts = [make_prompt(c) for c in load_concepts("train")["concept"]]
    prompts_eval = eval_prompts(n_eval)
    evals = {"sft": evaluate(sft, tok, prompts_eval, p.eval_sampling, sft, reward_model)}
    times: dict[str, list[float]] = {}
    opt_steps: dict[str, float] = {}
    trainable: dict[str, int] = {}
    curves: dict[str, list] = {}
    profile: dict[str, dict[str, float]] = {}
    order = [c for c in critics if c == "shared"] + ["trl"] + [c for c in critics if c != "shared"]
    # our prompt batch of every step (a pure function of the prompts, the seed and the batch size)
    batches = [
        PPOTrainer.prompts_for_step(SimpleNamespace(train_prompts=train_prompts, config=p.ppo), i) for i in range(steps)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name in order:
            if name == "trl":
                policy, times["trl"], n, curves["trl"] = train_trl(
                    sft, reward_model, tok, batches, p.ppo, tmp, progress
                )
            else:
                critic = "shared" if name == "shared_full" else name
                config = dataclasses.replace(p.ppo, steps=steps, critic=critic)  # lr decays over `steps`
                policy, times[OURS[name]], trainer, n, curves[OURS[name]] = train_ours(
                    sft, reward_model, tok, train_prompts, config, setup, steps, trunk=name != "shared_full"
                )
                assert [trainer.prompts_for_step(i) for i in range(steps)] == batches
                later = trainer.history[1:] or trainer.history
                profile[OURS[name]] = {
                    k: statistics.fmean(h[k] for h in later) for k in later[0] if k.startswith("time/")
                }
                del trainer
            name = OURS.get(name, name)
            opt_steps[name], trainable[name] = n[0] / steps, n[1]
            evals[name] = evaluate(policy, tok, prompts_eval, p.eval_sampling, sft, reward_model)
            del policy
    per_step = {k: statistics.fmean(v[1:] or v) for k, v in times.items()}  # one step: its own time
    mean = {k: {n: statistics.fmean(e[k]) for n, e in evals.items()} for k in ("gold", "rm", "kl", "tokens")}
    ours = OURS[critics[0]] if "shared" not in critics else "rlhf_edu"
    s = p.ppo.sampling
    return {
        "ppo_speedup_vs_trl": per_step["trl"] / per_step[ours],
        "ppo_speedup_vs_trl_same_critic": (
            per_step["trl"] / per_step["rlhf_edu_rm_critic"] if "rlhf_edu_rm_critic" in per_step else None
        ),
        "seconds_per_step": per_step,
        "timing": "mean seconds per PPO step over steps 2..N (rollout + update); step_seconds has every step",
        "step_seconds": times,
        "optimizer_steps_per_ppo_step": opt_steps,
        "trainable_params": trainable,
        "train_score_kl": curves,
        "profile": profile,  # ours: mean seconds per step in each part (time/*), steps 2..N
        "gold": mean["gold"],
        "rm_score": mean["rm"],
        "kl": mean["kl"],
        "response_tokens": mean["tokens"],
        "gold_vs_trl": {
            n: paired_difference(evals[n]["gold"], evals["trl"]["gold"]) for n in evals if n not in ("trl", "sft")
        },
        "steps": steps,
        "n_eval": n_eval,
        "preset": preset,
        "sources": [sft_source, rm_source],
        "settings": {
            "model": p.model_name + " after SFT (artifacts/sft)",
            "reward_model": "artifacts/reward_model",
            "batch_size": p.ppo.batch_size,
            "mini_batch_size": p.ppo.mini_batch_size,
            "micro_batch_size": p.ppo.micro_batch_size,
            "ppo_epochs": p.ppo.ppo_epochs,
            "response_length": s.max_new_tokens,
            "temperature": s.temperature,
            "top_k_top_p": "off",
            "lr": p.ppo.lr,
            "lr_schedule": f"linear to 0 over the {steps} steps run, no warm-up",
            "adam_eps": p.ppo.adam_eps,
            "kl_coef": p.ppo.kl_coef,
            "kl_estimator": "k1",
            "missing_eos_penalty": p.ppo.missing_eos_penalty,
            "stop": "truncate after the first EOS",
            "clip_range": p.ppo.clip_range,
            "clip_range_value": p.ppo.clip_range_value,
            "vf_coef": p.ppo.vf_coef,
            "gamma": p.ppo.gamma,
            "lam": p.ppo.lam,
            "whiten_rewards": p.ppo.whiten_rewards,
            "advantages": "whitened over the batch",
            "trainable_layers": p.ppo.trainable_layers,
            "dtype": str(setup.autocast_dtype or "fp32"),
            "prompt_batches": "identical per step (ours prompts_for_step fed to TRL in order)",
            "trl": "per_device_train_batch_size 16, gradient_accumulation_steps 1, num_mini_batches 2 "
            "(one optimizer step per minibatch of 8, as ours); lower blocks of policy and value "
            "model frozen by requires_grad",
        },
        "unmatched": UNMATCHED,
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
        "threads": torch.get_num_threads(),
        "total_s": time.perf_counter() - start,
    }


def main() -> None:
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--n-eval", type=int, default=32)
    parser.add_argument("--critics", default="shared,reward_model", help="ours: shared and/or reward_model")
    parser.add_argument("--json", help="also write the result to this file")
    a = parser.parse_args()
    result = run(a.steps, a.n_eval, tuple(a.critics.split(",")), progress=False)
    print(f"PPO, {a.steps} steps each, {result['threads']} thread(s), mean s/step over steps 2..{a.steps}")
    print(f"{'':22}{'s/step':>8}{'gold':>8}{'RM':>8}{'KL':>8}")
    for name in ["sft", *result["seconds_per_step"]]:
        sec = result["seconds_per_step"].get(name)
        print(
            f"{name:22}{'' if sec is None else f'{sec:.1f}':>8}{result['gold'][name]:8.3f}"
            f"{result['rm_score'][name]:8.3f}{result['kl'][name]:8.2f}"
        )
    print(f"ppo_speedup_vs_trl = {result['ppo_speedup_vs_trl']:.2f}x; total {result['total_s']:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    main()
