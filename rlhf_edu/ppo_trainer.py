"""The PPO trainer: the state one run carries between iterations (models, optimizer, scheduler,
KL controller, history), one iteration (`step`: `ppo_loop.rollout` then `ppo_loop.update`),
the loop with its progress bar, live plot and checkpoints, and `train_ppo`. Notebook: 04_ppo.ipynb
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from rlhf_edu import ppo_loop
from rlhf_edu.critic import ValueModel, value_head
from rlhf_edu.generation import SamplingConfig
from rlhf_edu.logprobs import (
    masked_mean,
    masked_sum,
)
from rlhf_edu.ppo import (
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
)
from rlhf_edu.ppo_loop import PPOConfig, Rollout
from rlhf_edu.reward_functions import is_reward_model
from rlhf_edu.store import param_sum
from rlhf_edu.training import (
    freeze_lower_layers,
    prompts_for_step,
    run_iterations,
    step_generator,
    step_timings,
)
from rlhf_edu.trunk import FrozenTrunk


class PPOTrainer:
    """PPO against a learned reward model with a per-token KL penalty to a frozen reference.

    `policy` trains in place; `reference` (the SFT policy) and `reward_model` stay frozen.
    `reward_model` may also be a reward function `(prompts, texts, eos_flags) -> (B,)`
    (`rlhf_edu.reward_functions`), with the shared critic. `step()`
    runs one iteration and returns its metrics as a flat dict; `train()` loops with a tqdm bar, a
    live plot and checkpoints; `save_checkpoint` / `load_checkpoint` resume a run to the same
    result on a CPU. Notebook: 04_ppo.ipynb
    """

    def __init__(
        self,
        policy,
        reference,
        reward_model,
        tokenizer,
        train_prompts: list[str],
        config: PPOConfig = PPOConfig(),
        *,
        eval_prompts: list[str] | None = None,
        eval_sampling: SamplingConfig | None = None,
        setup=None,
    ):
        from rlhf_edu.devices import policy_gradient_precision
        from rlhf_edu.models import disable_dropout

        if not train_prompts:
            raise ValueError("PPOTrainer needs at least one training prompt")
        self.policy, self.reference, self.reward_model = policy, reference, reward_model
        self.tokenizer, self.config = tokenizer, config
        self.train_prompts = list(train_prompts)
        self.eval_prompts = list(eval_prompts or [])
        self.eval_sampling = eval_sampling or config.sampling
        self.setup, self.autocast_ctx, self.logps_ctx, self.ratio_tolerance = policy_gradient_precision(setup, config)
        self.device = next(policy.parameters()).device
        frozen = [reference] + ([reward_model] if is_reward_model(reward_model) else [])
        for model in (policy, *frozen):
            disable_dropout(model)
        for model in frozen:
            model.eval()
            model.requires_grad_(False)
        if config.critic == "reward_model" and not is_reward_model(reward_model):
            raise ValueError("critic='reward_model' copies a reward model; with a reward function use critic='shared'")

        freeze_lower_layers(policy, config.trainable_layers)
        self.trunk = FrozenTrunk(policy, config.trainable_layers, reference)
        self.trunk_gap: float | None = None  # FrozenTrunk.check on the first rollout
        policy.train()
        hidden_size = policy.config.hidden_size
        if config.critic == "shared":
            self.value_head, self.critic = value_head(hidden_size).to(self.device), None
            value_params = list(self.value_head.parameters())
        else:
            self.value_head, self.critic = None, ValueModel(reward_model).to(self.device)
            freeze_lower_layers(self.critic, config.trainable_layers)
            self.critic.train()
            value_params = [p for p in self.critic.parameters() if p.requires_grad]
        self.params = [p for p in policy.parameters() if p.requires_grad] + value_params
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr, eps=config.adam_eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: max(0.0, 1.0 - s / config.steps),  # linear decay, no warm-up
        )
        self.scaler = torch.amp.GradScaler(self.setup.device, enabled=self.setup.grad_scaler)
        self.kl_controller = (
            AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
            if config.kl_target is not None
            else FixedKLController(config.kl_coef)
        )
        self.step_count = 0
        self.history: list[dict] = []

    # ---------------------------------------------------------------- pieces of one iteration

    def prompts_for_step(self, step: int) -> list[str]:
        """The batch of prompts of iteration `step`: a seeded shuffle per pass over the prompts."""
        return prompts_for_step(self.train_prompts, step, self.config.batch_size, self.config.seed)

    def generator_for_step(self, step: int) -> torch.Generator:
        """The random generator of iteration `step` (sampling, then minibatch shuffles)."""
        return step_generator(self.config.seed, step)

    def fingerprint(self) -> list[float]:
        """Sums of the reference's and the reward model's weights: a resumed run must use the same."""
        return [param_sum(m) if is_reward_model(m) else 0.0 for m in (self.reference, self.reward_model)]

    def forward(self, input_ids, attention_mask, context_length, trunk=None):
        """New log-probs and values of the policy and critic (`ppo_loop.forward`)."""
        return ppo_loop.forward(self, input_ids, attention_mask, context_length, trunk)

    def rollout(self, prompts: list[str], generator: torch.Generator) -> Rollout:
        """Steps 1 to 4 (`ppo_loop.rollout`): sample, score, per-token rewards, GAE."""
        return ppo_loop.rollout(self, prompts, generator)

    def update(self, rollout: Rollout, generator: torch.Generator) -> dict[str, float]:
        """Steps 5 and 6 (`ppo_loop.update`): clipped losses over epochs x minibatches, clip, step."""
        return ppo_loop.update(self, rollout, generator)

    def evaluate(self) -> dict[str, float]:
        """Gold score, RM score, KL to the reference and length on the fixed eval prompts (the
        first `config.eval_subset` of them)."""
        rows = self.evaluate_rows(prompts=self.eval_prompts[: self.config.eval_subset])
        return {
            "eval/gold": sum(r["gold"] for r in rows) / len(rows),
            "eval/rm": sum(r["rm"] for r in rows) / len(rows),
            "eval/kl": sum(r["kl"] for r in rows) / len(rows),
            "eval/length": sum(r["tokens"] for r in rows) / len(rows),
        }

    def evaluate_rows(self, model=None, prompts: list[str] | None = None) -> list[dict]:
        """Rows {prompt, response, gold, rm, kl, ...} of `model` (default: the policy) on `prompts`
        (default: all eval prompts), drawn with the eval seed so every checkpoint answers with the
        same randomness."""
        from rlhf_edu.metrics import evaluate_policy

        prompts = self.eval_prompts if prompts is None else prompts
        if not prompts:
            raise ValueError("PPOTrainer was built without eval_prompts")
        model = model or self.policy
        was_training = model.training
        model.eval()
        rows = evaluate_policy(
            model,
            self.tokenizer,
            prompts,
            self.eval_sampling,
            seed=self.config.seed,
            autocast_ctx=self.autocast_ctx,
            reference=self.reference,
            reward_model=self.reward_model if is_reward_model(self.reward_model) else None,
        )
        if not is_reward_model(self.reward_model):
            scores = self.reward_model(prompts, [r["response"] for r in rows], [r["eos"] for r in rows])
            for row, score in zip(rows, torch.as_tensor(scores, dtype=torch.float32).tolist()):
                row["rm"] = score
        model.train(was_training)
        return rows

    # ---------------------------------------------------------------- one iteration and the loop

    def step(self, keep_rollout: bool = False):
        """One PPO iteration: rollout, update, KL-coefficient update. Returns the metrics dict
        (and the Rollout with keep_rollout=True)."""
        cfg, step = self.config, self.step_count
        t0 = time.perf_counter()
        generator = self.generator_for_step(step)
        rollout = self.rollout(self.prompts_for_step(step), generator)
        rollout_end = time.perf_counter()
        mask = rollout.response_mask.to(rollout.old_logps.dtype)  # (B, R)
        kl = masked_sum(rollout.old_logps - rollout.ref_logps, mask, dim=1)  # (B,) nats per response
        metrics = {
            "step": step + 1,
            "objective/score": float(rollout.rm_scores.mean()),
            "objective/score_penalized": float(rollout.scores.mean()),
            "objective/kl": float(kl.mean()),
            "objective/non_score_reward": float(masked_sum(rollout.non_score_reward, mask, dim=1).mean()),
            "objective/kl_coef": self.kl_controller.kl_coef,
            "policy/entropy": float(-masked_mean(rollout.old_logps, mask)),
            "val/explained_variance": float(explained_variance(rollout.old_values, rollout.returns, mask)),
            "response/length": float(mask.sum(dim=1).mean()),
            "response/eos_fraction": float(rollout.samples.has_eos.float().mean()),
            "ref/perplexity": float(torch.exp(-masked_mean(rollout.ref_logps, mask))),
        }
        metrics["objective/rlhf_reward"] = metrics["objective/score_penalized"] + metrics["objective/non_score_reward"]
        metrics.update(self.update(rollout, generator))
        metrics["policy/lr"] = self.scheduler.get_last_lr()[0]  # the lr this step's updates used
        self.scheduler.step()
        self.kl_controller.update(metrics["objective/kl"], cfg.batch_size)
        if metrics["objective/kl"] < -1.0:
            warnings.warn(
                f"PPO step {step}: objective/kl = {metrics['objective/kl']:.2f} nats is negative: the "
                f"samples do not come from the policy that is scored (a logits processor, top-k, or a "
                f"temperature mismatch between sampling and log-probs?)",
                stacklevel=2,
            )
        metrics.update(step_timings(t0, rollout_end, rollout.timings))
        if self.trunk_gap is not None:
            metrics["health/trunk_gap"] = self.trunk_gap
        metrics["time/tokens_per_s"] = float(mask.sum()) / max(rollout.timings.get("generate", 0.0), 1e-9)
        self.step_count += 1
        if self.eval_prompts and (self.step_count % cfg.eval_every == 0 or self.step_count == cfg.steps):
            metrics.update(self.evaluate())
        self.history.append(metrics)
        return (metrics, rollout) if keep_rollout else metrics

    def train(
        self,
        steps: int | None = None,
        *,
        on_step=None,
        progress: bool = True,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int | None = None,
    ) -> list[dict]:
        """Run until `steps` iterations in total (default `config.steps`); returns the history.

        With `checkpoint_dir`, a checkpoint is written every `checkpoint_every` steps and at the end.
        """
        steps = self.config.steps if steps is None else steps
        if on_step is not None:  # a resumed run shows its past too
            for metrics in self.history:
                on_step(metrics["step"], metrics)
        return run_iterations(
            self,
            steps,
            desc="PPO",
            on_step=on_step,
            progress=progress,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
        )

    # ---------------------------------------------------------------- checkpoints

    def save_checkpoint(self, out_dir: str | Path) -> Path:
        """The policy (save_pretrained, safetensors), the critic (safetensors), and the optimizer,
        scheduler, scaler and trainer state. Written to a temporary folder and swapped in with two
        renames (`checkpoints.save_training_checkpoint`), so a run killed at any moment leaves one complete
        checkpoint."""
        from safetensors.torch import save_file

        from rlhf_edu.checkpoints import save_training_checkpoint

        def write_weights(folder: Path) -> None:
            self.policy.save_pretrained(folder / "policy", safe_serialization=True)
            self.tokenizer.save_pretrained(folder / "policy")
            critic = self.value_head if self.value_head is not None else self.critic
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in critic.state_dict().items()}, str(folder / CRITIC_FILE)
            )

        return save_training_checkpoint(
            out_dir,
            write_weights,
            self.optimizer,
            self.scheduler,
            self.scaler,
            {
                "step": self.step_count,
                "kl_coef": self.kl_controller.kl_coef,
                "config": _config_dict(self.config),
                "fingerprint": self.fingerprint(),
                "history": self.history,
            },
        )

    def load_checkpoint(self, out_dir: str | Path) -> None:
        """Restore what `save_checkpoint` wrote into this trainer (built with the same config)."""
        import json

        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

        from rlhf_edu.checkpoints import find_checkpoint

        out_dir = Path(out_dir)
        if find_checkpoint(out_dir) is None:
            raise FileNotFoundError(f"no PPO checkpoint in {out_dir} (missing trainer_state.json)")
        state_path = out_dir / "trainer_state.json"
        state = json.loads(state_path.read_text())
        if state["config"] != _config_dict(self.config):
            raise ValueError(
                f"the checkpoint in {out_dir} was written with another PPOConfig; build the trainer "
                f"with the same config to resume it"
            )
        if any(abs(a - b) > 1e-6 * max(1.0, abs(b)) for a, b in zip(state["fingerprint"], self.fingerprint())):
            raise ValueError(
                f"the checkpoint in {out_dir} was trained against another reference policy or reward "
                f"model; delete it to start over"
            )
        saved = AutoModelForCausalLM.from_pretrained(out_dir / "policy", dtype=torch.float32)
        self.policy.load_state_dict(saved.state_dict())
        critic = self.value_head if self.value_head is not None else self.critic
        critic.load_state_dict(load_file(str(out_dir / CRITIC_FILE)))
        opt = torch.load(out_dir / "optimizer.pt", weights_only=True, map_location=self.device)
        self.optimizer.load_state_dict(opt["optimizer"])
        self.scheduler.load_state_dict(opt["scheduler"])
        self.scaler.load_state_dict(opt["scaler"])
        self.kl_controller.kl_coef = state["kl_coef"]
        self.step_count = state["step"]
        self.history = state["history"]


CRITIC_FILE = "critic.safetensors"


def _config_dict(config: PPOConfig) -> dict:
    import json

    return json.loads(json.dumps(asdict(config)))


def train_ppo(
    policy,
    reference,
    reward_model,
    tokenizer,
    train_prompts: list[str],
    config: PPOConfig = PPOConfig(),
    **kwargs,
) -> PPOTrainer:
    """Build a PPOTrainer and run `config.steps` iterations; returns the trainer (its `history`
    holds one metrics dict per step). Keyword arguments go to PPOTrainer (`eval_prompts`,
    `eval_sampling`, `setup`) or to `PPOTrainer.train` (`on_step`, `progress`, `checkpoint_dir`,
    `checkpoint_every`). Notebook: 04_ppo.ipynb
    """
    train_keys = {"on_step", "progress", "checkpoint_dir", "checkpoint_every"}
    train_kwargs = {k: v for k, v in kwargs.items() if k in train_keys}
    trainer = PPOTrainer(
        policy,
        reference,
        reward_model,
        tokenizer,
        train_prompts,
        config,
        **{k: v for k, v in kwargs.items() if k not in train_keys},
    )
    trainer.train(**train_kwargs)
    return trainer
