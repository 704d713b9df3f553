"""Orchestration for notebooks 06 and 07: budgets, saved policies, cached eval rows, the scoreboard,
and the AI judge.

Notebook 06 trains DPO and GRPO (or RLOO) and compares them with SFT and PPO; notebook 07 ranks every
policy the course built. Both evaluate through `rlhf_edu.yardstick` (the course's one evaluation:
the same eval prompts, temperature and seed in every notebook), which rests on this module:

- holds their budgets per preset (`FinalEvalBudget`, `BUDGETS`, `final_eval_budget`);
- saves and loads the policies (`save_policy`, `load_policy`): a checkpoint is used only when it was
  trained at the current preset with the current config, otherwise the caller is told why not;
- evaluates a policy once and caches its rows in `artifacts/eval_rows/<policy>.json`, keyed by the
  preset, the eval settings and fingerprints of every model involved (`policy_eval_rows`,
  `best_of_n_eval_rows`), so notebook 07 reuses what notebook 06 sampled;
- turns rows into one scoreboard line (`scoreboard_row`);
- asks a language model which of two answers is better (`judge_margins`, `ai_preferences`): the
  offline stand-in for the AI feedback of Bai et al. (2022, "Constitutional AI") and Lee et al.
  (2023, "RLAIF"). The judge reads a prompt that lists the rubric's criteria and both answers, and
  its preference is log p("A") - log p("B") for the next token. Each pair is shown in both orders
  and the two margins are differenced, which cancels a constant position bias (Zheng et al. 2023,
  "Judging LLM-as-a-judge with MT-Bench and Chatbot Arena", who swap positions for the same reason).

Deliberate choices:
- Eval rows are scored on the sampled tokens (`score_samples`): the draws, gold, reward-model
  score and KL are those of `metrics.evaluate_policy` (same seed, same formulas); one reference
  forward pass gives both the KL (logits / temperature) and the perplexity (temperature 1).
- Best-of-n has no per-sample KL estimate: its rows carry the analytic bound log n - (n - 1)/n
  (Gao et al. 2022; `tradeoffs.bon_kl_bound`), an upper bound on KL(pi_bon || pi_sft).
- A fingerprint is the float64 sum of a model's parameters and buffers, remembered per model until
  one of its tensors changes: any training step changes it. It is not a cryptographic hash.

Notebooks: 06_dpo_grpo.ipynb, 07_evaluation.ipynb
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf_edu.dpo import DPOConfig
from rlhf_edu.generation import Samples, SamplingConfig, encode_prompts, sample
from rlhf_edu.grpo_loop import GRPOConfig
from rlhf_edu.logprobs import (
    masked_sum,
    per_token_logps,
    position_ids_from_mask,
    response_logits,
    selective_log_softmax,
)
from rlhf_edu.reward import RewardConfig
from rlhf_edu.rubric import COMPONENTS, score_batch
from rlhf_edu.store import cache_key, fingerprint, jsonable, param_sum

CACHE_VERSION = 3
EVAL_ROWS_DIR = "eval_rows"

# --------------------------------------------------------------------------- budgets


@dataclass(frozen=True)
class FinalEvalBudget:
    """The budgets of notebooks 06 and 07 at one preset."""

    dpo: DPOConfig
    """DPO training (06); `batch_size * max_steps` pairs are used, each seen once."""
    dpo_heldout: int
    """Held-out pairs (eval concepts) on which DPO's implicit-reward accuracy is measured."""
    grpo: GRPOConfig
    """GRPO / Dr GRPO / RLOO training (06); `advantage` names the algorithm and the policy."""
    judge_pairs: int
    """Annotator-labeled train pairs that the AI judge labels (both orders) in 06."""
    judge_reward: RewardConfig
    """Training of the two reward models of the AI-feedback comparison (AI labels vs annotator's)."""
    judge_heldout: int
    """Held-out pairs (annotator labels) on which those two reward models are compared."""
    judge_batch_size: int = 8
    """Judging prompts per forward pass (each holds two responses: about 250 tokens)."""
    bon_n: int = 4
    """n of the best-of-n policy in 07 (n samples of the SFT policy, the reward model picks one)."""
    ab_items: int = 8
    """Prompts judged blind in the A/B widget of 07."""
    seed: int = 0
    """The seed of the pair choices (evaluation itself is the yardstick's: `rlhf_edu.yardstick`)."""
    notes: str = ""
    """Where the time goes, in words."""

    def __post_init__(self):
        if self.dpo_heldout < 1 or self.judge_pairs < 2 or self.judge_heldout < 1:
            raise ValueError("need dpo_heldout >= 1, judge_pairs >= 2 and judge_heldout >= 1")
        if self.dpo.max_steps is None:
            raise ValueError("the DPO budget needs max_steps (it sets how many pairs are used)")
        if self.bon_n < 1 or self.ab_items < 1 or self.judge_batch_size < 1:
            raise ValueError("bon_n, ab_items and judge_batch_size must be >= 1")

    @property
    def dpo_pairs(self) -> int:
        """Training pairs DPO uses: one pass, batch_size * max_steps."""
        return self.dpo.batch_size * self.dpo.max_steps

    @property
    def group_algorithm(self) -> str:
        """ "grpo", "dr_grpo" or "rloo": the name of the group-baseline policy."""
        return self.grpo.advantage


# Seconds are estimates for a 2-core laptop from measured unit costs on such a machine: a
# forward+backward of 16 sequences of ~100 tokens on SmolLM2-135M ~5.5 s (about 3.5 s with only the
# top 8 of its 30 blocks training), a no-grad forward of 16 such sequences ~1.5 s, sampling 64 tokens
# ~0.25 s per sample in batches of 16.
BUDGETS: dict[str, FinalEvalBudget] = {
    "smoke": FinalEvalBudget(
        dpo=DPOConfig(beta=0.1, lr=5e-5, batch_size=2, max_steps=2, trainable_layers=2),
        dpo_heldout=4,
        grpo=GRPOConfig(
            steps=2,
            prompts_per_step=2,
            group_size=2,
            mini_batch_size=4,
            micro_batch_size=4,
            lr=1e-4,
            sampling=SamplingConfig(16, 1.0, 4),
            trainable_layers=2,
        ),
        judge_pairs=4,
        judge_reward=RewardConfig(lr=3e-5, batch_size=2, max_steps=1, trainable_layers=1),
        judge_heldout=4,
        judge_batch_size=4,
        bon_n=2,
        ab_items=3,
        notes="every code path with the real model; numbers mean nothing",
    ),
    # cpu, notebook 06, about 8.6 minutes:
    #   load SFT, reward model and PPO policy, with their fingerprints: 10 s;
    #   DPO by hand on two pairs and the loss curves: 3 s;
    #   DPO reference log-probs of 224 train + 64 held-out pairs: 576 sequences, 36 x 1.5 s = 54 s;
    #   DPO 28 steps x 8 pairs, top 8 blocks: 28 x 3.5 s = 98 s; held-out log-probs after: 6 s;
    #   GRPO by hand on one rollout (16 samples 4 s, reward model 1.5 s, two forwards 3 s): 9 s;
    #   GRPO 8 steps x (rollout 9 s + update of 16 samples in 4 minibatches 3.5 s) = 100 s;
    #   the KL enumeration: 0 s;
    #   AI judge, 48 pairs x 2 orders, ~250 tokens each: 96 / 16 x 4 s = 25 s;
    #   two reward models, 10 steps x 8 pairs with 4 blocks training: 2 x 25 s, held-out 48 pairs
    #   each 2 x 9 s: 68 s;
    #   eval of SFT, DPO, GRPO and PPO on 64 prompts: 4 x (sampling 16 s + policy, reference and
    #   reward-model forwards 18 s) = 136 s.
    # cpu, notebook 07, about 3 minutes (5 if notebook 06's eval rows are not cached):
    #   load SFT and reward model 7 s; base model: load 3 s, 64 answers that rarely stop 16 s,
    #   forwards 18 s; SFT, PPO, DPO, GRPO: load and fingerprint 3 s each, rows from 06's cache
    #   (else 34 s each); best-of-4: 256 samples 64 s, reward model 24 s, reference on the 64 kept
    #   6 s; win-rate matrix, 15 pairs x 64 prompts of rubric scores, 4 s; tables, plots, widget 3 s.
    "cpu": FinalEvalBudget(
        # lr as the reward model's and PPO's (1e-4 on the top 8 blocks): at a few dozen steps the
        # literature's 5e-7 to 1e-6 (batch 64, thousands of steps) would not move the policy.
        dpo=DPOConfig(beta=0.1, lr=1e-4, batch_size=8, max_steps=28, warmup_steps=2, trainable_layers=8),
        dpo_heldout=64,
        # 4 minibatches per batch: 32 optimizer steps in all, a third of PPO's 112 (14 steps x 4 epochs
        # x 2), hence twice its learning rate.
        grpo=GRPOConfig(
            steps=8,
            prompts_per_step=4,
            group_size=4,
            mini_batch_size=4,
            micro_batch_size=4,
            epochs=1,
            lr=2e-4,
            kl_coef=0.05,
            sampling=SamplingConfig(64, 1.0, 16),
            trainable_layers=8,
        ),
        judge_pairs=48,
        judge_reward=RewardConfig(lr=1e-4, batch_size=8, max_steps=10, warmup_steps=1, trainable_layers=4),
        judge_heldout=48,
        judge_batch_size=16,
        bon_n=4,
        ab_items=12,
        notes="06 measured 7.5 minutes, 07 6.1 (11 s with 06's cached eval rows) on 2 cores",
    ),
    # gpu (Colab T4, fp16 autocast): not timed on a T4; roughly 10-20x the 2-core laptop, so
    # DPO 96 steps x 16 pairs ~2 min, GRPO 24 steps x 64 samples ~4 min, eval 128 prompts per
    # policy ~10 s, best-of-16 ~1 min.
    "gpu": FinalEvalBudget(
        dpo=DPOConfig(beta=0.1, lr=2e-5, batch_size=16, max_steps=96, warmup_steps=8),
        dpo_heldout=256,
        grpo=GRPOConfig(
            steps=24,
            prompts_per_step=8,
            group_size=8,
            mini_batch_size=16,
            micro_batch_size=16,
            epochs=1,
            lr=5e-5,
            kl_coef=0.05,
            sampling=SamplingConfig(64, 1.0, 64),
        ),
        judge_pairs=256,
        judge_reward=RewardConfig(lr=2e-5, batch_size=16, max_steps=16, warmup_steps=2),
        judge_heldout=256,
        judge_batch_size=32,
        bon_n=16,
        ab_items=16,
        notes="a Colab T4: every notebook in 10 minutes or less",
    ),
}


def final_eval_budget(preset: str) -> FinalEvalBudget:
    """The budgets of notebooks 06 and 07 at a preset (`smoke`, `cpu` or `gpu`).

    Notebooks: 06_dpo_grpo.ipynb, 07_evaluation.ipynb
    """
    if preset not in BUDGETS:
        raise ValueError(f"no budgets for preset {preset!r}; choose one of {sorted(BUDGETS)}")
    return BUDGETS[preset]


# --------------------------------------------------------------------------- saving and loading policies


def policy_dir(name: str) -> Path:
    """Where a policy of the course lives: artifacts/<name> ("dpo", "grpo"; PPO's is ppo/policy)."""
    from rlhf_edu.store import artifacts_dir

    return artifacts_dir() / name


def save_policy(model, tokenizer, name: str, *, preset: str, config, reference=None, extra: dict | None = None) -> Path:
    """Save a trained policy to artifacts/<name>/ with `checkpoints.save_checkpoint` (safetensors) and a
    run_info.json holding the preset, the config, the reference's fingerprint and `extra` (history,
    seconds). `load_policy` checks the first three. Notebook: 06_dpo_grpo.ipynb"""
    from rlhf_edu.checkpoints import save_checkpoint

    info = {"preset": preset, "config": jsonable(config), **jsonable(extra or {})}
    if reference is not None:
        info["reference"] = fingerprint(reference)
    return save_checkpoint(model, tokenizer, policy_dir(name), info)


def load_policy(name: str, preset, budget: FinalEvalBudget, *, device="cpu", reference=None, reward_model=None):
    """Load one of the course's policies: -> (model, tokenizer, info, message), or (None, None,
    None, reason) when it is missing or belongs to another run.

    name: "base" (the preset's starting model), "ppo" (notebook 04: artifacts/ppo/policy, a
    finished run at this preset's PPOConfig, against this `reference` and `reward_model` when
    given), "dpo" or "grpo" (notebook 06: artifacts/<name>, trained at this preset with this
    budget's config, from this `reference` when given).

    Notebooks: 06_dpo_grpo.ipynb, 07_evaluation.ipynb
    """
    from rlhf_edu.models import load_model

    if name == "base":
        model, tok = load_model(preset.model_name, device=device)
        return model, tok, {}, f"base: {preset.model_name}, before any fine-tuning"
    if name == "ppo":
        root = policy_dir("ppo")
        state_path = root / "trainer_state.json"
        if not state_path.exists():
            return None, None, None, f"ppo: missing ({state_path} not found; run notebook 04)"
        state = json.loads(state_path.read_text())
        if state.get("config") != jsonable(preset.ppo):
            return None, None, None, f"ppo: the run in {root} used another PPOConfig than the {preset.name} preset's"
        if state.get("step") != preset.ppo.steps:
            return None, None, None, f"ppo: the run in {root} stopped at step {state.get('step')} of {preset.ppo.steps}"
        for what, model in (("reference", reference), ("reward model", reward_model)):
            if model is None:
                continue
            saved = state["fingerprint"][0 if what == "reference" else 1]
            if abs(saved - param_sum(model)) > 1e-6 * max(1.0, abs(saved)):
                return None, None, None, f"ppo: the run in {root} was trained against another {what}"
        model, tok = load_model(str(root / "policy"), device=device)
        return model, tok, state, f"ppo: loaded from {root / 'policy'} ({state['step']} steps)"
    if name not in ("dpo", "grpo"):
        raise ValueError(f"unknown policy {name!r}; choose base, ppo, dpo or grpo")
    root = policy_dir(name)
    info_path = root / "run_info.json"
    if not info_path.exists():
        return None, None, None, f"{name}: missing ({info_path} not found; run notebook 06)"
    info = json.loads(info_path.read_text())
    config = budget.dpo if name == "dpo" else budget.grpo
    if info.get("preset") != preset.name or info.get("config") != jsonable(config):
        return (
            None,
            None,
            None,
            (
                f"{name}: the policy in {root} was trained at preset {info.get('preset')!r} "
                f"or with another config than this budget's"
            ),
        )
    if reference is not None and info.get("reference") not in (None, fingerprint(reference)):
        return None, None, None, f"{name}: the policy in {root} was trained from another SFT policy"
    model, tok = load_model(str(root), device=device)
    return model, tok, info, f"{name}: loaded from {root}"


# --------------------------------------------------------------------------- eval rows, cached


def score_samples(
    samples: Samples,
    prompts: list[str],
    *,
    reference=None,
    reward_model=None,
    policy=None,
    temperature: float,
    batch_size: int = 16,
    autocast_ctx=None,
) -> list[dict]:
    """Rows {prompt, response, tokens, eos, gold, <components>, rm, kl, ref_nll, ref_tokens} for
    sampled responses, scored on the sampled tokens themselves.

    - gold and its components: the rubric (`rubric.score_batch`);
    - rm: the reward model's score (when `reward_model` is given);
    - kl: sum over the response of log pi(y_t) - log pi_ref(y_t), both from logits / temperature,
      the k1 estimate of KL(pi || ref) in nats per response (when `policy` is given);
    - ref_nll: - sum of log pi_ref(y_t) at temperature 1 over the response (and its EOS), and
      ref_tokens its token count: perplexity = exp(sum ref_nll / sum ref_tokens).

    The same numbers as `metrics.evaluate_policy` for gold, rm and kl; the reference's one forward
    pass serves both the KL and the perplexity. Without a reference, no kl and no ref_nll.
    Notebooks: 06_dpo_grpo.ipynb, 07_evaluation.ipynb (through `rlhf_edu.yardstick`)
    """
    scored = score_batch(prompts, samples.texts, samples.has_eos.tolist())
    rows = [
        {"prompt": p, "response": r, "tokens": int(n), "eos": bool(e), **s}
        for p, r, n, e, s in zip(prompts, samples.texts, samples.n_tokens, samples.has_eos, scored)
    ]
    models = [m for m in (reference, reward_model) if m is not None]
    if not models:
        return rows
    device = next(models[0].parameters()).device
    ctx = autocast_ctx or contextlib.nullcontext()
    P = samples.context_length
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        ids = samples.input_ids[start : start + batch_size].to(device)  # (b, P+R)
        mask = samples.attention_mask[start : start + batch_size].to(device)  # (b, P+R)
        response_mask = samples.response_mask[start : start + batch_size].to(device).float()  # (b, R)
        labels = ids[:, P:]  # (b, R) the sampled response tokens
        with torch.no_grad(), ctx:
            if reference is not None:
                ref_logits = response_logits(reference, ids, mask, P).float()  # (b, R, V)
                ref_logps_t = selective_log_softmax(ref_logits / temperature, labels)  # (b, R) as sampled
                ref_logps_1 = selective_log_softmax(ref_logits, labels)  # (b, R) the reference itself
                del ref_logits
                nll = -masked_sum(ref_logps_1, response_mask, dim=1)  # (b,)
                for row, value, n in zip(chunk, nll.tolist(), response_mask.sum(dim=1).tolist()):
                    row["ref_nll"], row["ref_tokens"] = value, int(n)
                if policy is not None:
                    logps = per_token_logps(policy, ids, mask, P, temperature)  # (b, R)
                    kl = masked_sum(logps - ref_logps_t, response_mask, dim=1)  # (b,)
                    for row, value in zip(chunk, kl.tolist()):
                        row["kl"] = value
            if reward_model is not None:
                for row, value in zip(chunk, reward_model(ids, mask).float().tolist()):
                    row["rm"] = value
    return rows


def _prompts_digest(prompts: list[str]) -> str:
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]


def eval_cache_path(name: str) -> Path:
    """artifacts/eval_rows/<name>.json"""
    from rlhf_edu.store import artifacts_dir

    return artifacts_dir() / EVAL_ROWS_DIR / f"{name}.json"


def cached_rows(name: str, settings: dict, compute, *, refresh: bool = False) -> tuple[list[dict], str]:
    """Rows from artifacts/eval_rows/<name>.json when its key equals `settings`' key, else
    `compute()` now and saved there. Returns (rows, message). Notebooks: 06, 07"""
    from rlhf_edu.store import write_json

    path, key = eval_cache_path(name), cache_key(settings)
    if path.exists() and not refresh:
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return stored["rows"], f"{name}: {len(stored['rows'])} eval rows from {path}"
    t0 = time.perf_counter()
    rows = compute()
    seconds = time.perf_counter() - t0
    write_json(path, {"key": key, "settings": jsonable(settings), "seconds": round(seconds, 1), "rows": rows})
    return rows, f"{name}: sampled and scored {len(rows)} eval rows in {seconds:.0f} s (saved to {path})"


def eval_settings(
    name: str,
    preset_name: str,
    prompts: list[str],
    sampling: SamplingConfig,
    seed: int,
    models: dict[str, torch.nn.Module],
    **extra,
) -> dict:
    """Everything the eval rows of policy `name` depend on, for `cached_rows`: the preset, the
    prompts, the sampling settings, the seed and the fingerprint of each model involved."""
    return {
        "version": CACHE_VERSION,
        "policy": name,
        "preset": preset_name,
        "n_prompts": len(prompts),
        "prompts": _prompts_digest(prompts),
        "sampling": sampling,
        "seed": seed,
        "models": {k: fingerprint(m) for k, m in models.items()},
        **extra,
    }


def policy_eval_rows(
    name: str,
    model,
    tokenizer,
    prompts: list[str],
    sampling: SamplingConfig,
    *,
    preset_name: str,
    seed: int,
    reference,
    reward_model,
    autocast_ctx=None,
    refresh: bool = False,
    extra: dict | None = None,
) -> tuple[list[dict], str]:
    """One response per prompt from `model`, drawn as `metrics.evaluate_policy` draws it (the same
    seed for every policy), scored by `score_samples`; cached in artifacts/eval_rows/<name>.json.
    Returns (rows, message). Notebooks: 06_dpo_grpo.ipynb, 07_evaluation.ipynb
    """
    models = {"policy": model, "reference": reference, "reward_model": reward_model}
    settings = eval_settings(
        name, preset_name, prompts, sampling, seed, {k: m for k, m in models.items() if m is not None}, **(extra or {})
    )

    def compute():
        was_training = model.training
        model.eval()
        samples = sample(
            model,
            tokenizer,
            prompts,
            sampling,
            generator=torch.Generator().manual_seed(seed),
            autocast_ctx=autocast_ctx,
        )
        rows = score_samples(
            samples,
            prompts,
            reference=reference,
            reward_model=reward_model,
            policy=model,
            temperature=sampling.temperature,
            batch_size=sampling.batch_size,
            autocast_ctx=autocast_ctx,
        )
        model.train(was_training)
        return rows

    return cached_rows(name, settings, compute, refresh=refresh)


@torch.no_grad()
def best_of_n_rows(
    policy,
    tokenizer,
    prompts: list[str],
    sampling: SamplingConfig,
    n: int,
    reward_model,
    *,
    reference=None,
    seed: int,
    autocast_ctx=None,
) -> list[dict]:
    """Best-of-n: n samples of `policy` per prompt, the reward model keeps the highest-scoring one.

    Rows as `score_samples`' for the kept samples (ref_nll under `reference`, default `policy`),
    with `rm` the kept score, `pool_rm` all n scores, and `kl` the analytic bound
    log n - (n - 1)/n for every row. Notebook: 07_evaluation.ipynb
    """
    from rlhf_edu.tradeoffs import best_of_n, bon_kl_bound

    repeated = [p for p in prompts for _ in range(n)]  # prompt-major: rows i*n .. i*n+n-1 answer prompt i
    pool = sample(
        policy, tokenizer, repeated, sampling, generator=torch.Generator().manual_seed(seed), autocast_ctx=autocast_ctx
    )
    device = next(reward_model.parameters()).device
    scores = []
    for start in range(0, len(repeated), sampling.batch_size):
        ids = pool.input_ids[start : start + sampling.batch_size].to(device)  # (b, P+R)
        mask = pool.attention_mask[start : start + sampling.batch_size].to(device)  # (b, P+R)
        with autocast_ctx or contextlib.nullcontext():
            scores.append(reward_model(ids, mask).float().cpu())  # (b,) the sampled tokens, as in training
    pool_scores = torch.cat(scores).view(len(prompts), n)  # (P, n)
    keep = best_of_n(pool_scores.numpy(), n)  # (P,) index within each prompt's n
    picked = torch.tensor([i * n + int(k) for i, k in enumerate(keep)])  # (P,) rows of the pool
    kept = Samples(
        pool.prompt_ids[picked],
        pool.prompt_mask[picked],
        pool.response_ids[picked],
        pool.response_mask[picked],
        pool.logps[picked],
        pool.has_eos[picked],
        [pool.texts[int(j)] for j in picked],
    )
    rows = score_samples(
        kept,
        prompts,
        reference=reference if reference is not None else policy,
        temperature=sampling.temperature,
        batch_size=sampling.batch_size,
        autocast_ctx=autocast_ctx,
    )
    kl = float(bon_kl_bound(n))
    for i, row in enumerate(rows):
        row.update(rm=float(pool_scores[i, keep[i]]), pool_rm=pool_scores[i].tolist(), kl=kl)
    return rows


def best_of_n_eval_rows(
    policy,
    tokenizer,
    prompts: list[str],
    sampling: SamplingConfig,
    n: int,
    *,
    preset_name: str,
    seed: int,
    reference,
    reward_model,
    autocast_ctx=None,
    refresh: bool = False,
    extra: dict | None = None,
) -> tuple[list[dict], str]:
    """`best_of_n_rows`, cached in artifacts/eval_rows/best_of_n.json (the key holds n).
    Notebook: 07_evaluation.ipynb"""
    settings = eval_settings(
        "best_of_n",
        preset_name,
        prompts,
        sampling,
        seed,
        {"policy": policy, "reference": reference, "reward_model": reward_model},
        n=n,
        **(extra or {}),
    )

    def compute():
        return best_of_n_rows(
            policy,
            tokenizer,
            prompts,
            sampling,
            n,
            reward_model,
            reference=reference,
            seed=seed,
            autocast_ctx=autocast_ctx,
        )

    return cached_rows("best_of_n", settings, compute, refresh=refresh)


# --------------------------------------------------------------------------- the scoreboard


def scoreboard_row(name: str, rows: list[dict], sft_rows: list[dict] | None = None) -> dict:
    """One line of the scoreboard from a policy's eval rows:

    gold (mean, and gold_se), components (the mean of each rubric component; the rubric's "length"
    is a score in [0, 1], not a token count), rm (mean reward-model score), kl (mean nats
    per response to the SFT policy), length (mean response tokens), eos_rate, perplexity under the
    SFT policy (exp of the token-weighted mean ref_nll) and distinct2 (distinct word bigrams over
    all bigrams of all responses). With `sft_rows` (the same prompts, in order): gold_delta, the
    paired difference to SFT, its standard error gold_diff_se, and gold_z = gold_delta / gold_diff_se.

    Notebooks: 06_dpo_grpo.ipynb, 07_evaluation.ipynb
    """
    from rlhf_edu.metrics import mean_and_se, paired_difference
    from rlhf_edu.tradeoffs import distinct_n

    if not rows:
        raise ValueError(f"no eval rows for {name!r}")
    mean = lambda key: sum(float(r[key]) for r in rows) / len(rows)
    gold, gold_se = mean_and_se([r["gold"] for r in rows])
    line = {
        "policy": name,
        "gold": gold,
        "gold_se": gold_se,
        "components": {c: mean(c) for c in COMPONENTS},
        "rm": mean("rm") if all("rm" in r for r in rows) else float("nan"),
        "kl": mean("kl") if all("kl" in r for r in rows) else float("nan"),
        "length": mean("tokens"),
        "eos_rate": mean("eos"),
        "distinct2": distinct_n([r["response"] for r in rows], 2),
    }
    if all("ref_nll" in r for r in rows):
        tokens = sum(r["ref_tokens"] for r in rows)
        line["perplexity"] = math.exp(sum(r["ref_nll"] for r in rows) / max(tokens, 1))
    else:
        line["perplexity"] = float("nan")
    if sft_rows is not None:
        if [r["prompt"] for r in rows] != [r["prompt"] for r in sft_rows]:
            raise ValueError(f"{name!r} and SFT answered different prompts; a paired difference needs the same")
        diff = paired_difference([r["gold"] for r in rows], [r["gold"] for r in sft_rows])
        line["gold_delta"], line["gold_diff_se"], line["gold_z"] = diff["delta"], diff["se"], diff["z"]
    return line


def ab_store_path(names: tuple[str, str], responses_x: list[str], responses_y: list[str]) -> Path:
    """A label file for one A/B comparison, named by the two policies and a digest of their
    responses: the same comparison resumes, a new one starts a new file. Notebook: 07_evaluation.ipynb"""
    from rlhf_edu.store import artifacts_dir

    digest = hashlib.sha256(json.dumps([list(names), responses_x, responses_y]).encode()).hexdigest()[:10]
    return artifacts_dir() / "labels" / f"ab-{names[0]}-vs-{names[1]}-{digest}.jsonl"


# --------------------------------------------------------------------------- the AI judge

JUDGE_CRITERIA = (
    "A good answer ends with a full sentence, is 2 to 4 short sentences long, names the topic, "
    "uses simple words, does not repeat itself, and is polite. A better one also talks to the child, "
    "compares the idea with something from everyday life, and mentions a thing from a child's day."
)
JUDGE_TEMPLATE = (
    "Here is a request and two answers.\n\nRequest: {prompt}\n\n{criteria}\n\n"
    "Answer A: {first}\n\nAnswer B: {second}\n\n"
    "Which answer is better, A or B? Reply with one letter."
)
CUT_OFF = " [cut off]"


def judge_prompt(prompt: str, first: str, second: str, first_eos: bool = True, second_eos: bool = True) -> str:
    """The judging request for one ordered pair: the rubric's criteria, then the answers as A and B.
    A response that ran out of tokens is marked "[cut off]", as a reader would see it stop.
    Notebook: 06_dpo_grpo.ipynb"""
    mark = lambda text, eos: text if eos else text + CUT_OFF
    return JUDGE_TEMPLATE.format(
        prompt=prompt, criteria=JUDGE_CRITERIA, first=mark(first, first_eos), second=mark(second, second_eos)
    )


def choice_token_ids(tokenizer) -> tuple[int, int]:
    """The token ids of the answers "A" and "B" (each must be one token)."""
    ids = []
    for letter in ("A", "B"):
        encoded = tokenizer(letter, add_special_tokens=False).input_ids
        if len(encoded) != 1:
            raise ValueError(f"{letter!r} is {len(encoded)} tokens for this tokenizer; the judge needs one")
        ids.append(encoded[0])
    return ids[0], ids[1]


@torch.no_grad()
def judge_margins(model, tokenizer, requests: list[str], batch_size: int = 8, autocast_ctx=None) -> torch.Tensor:
    """log p("A") - log p("B") for the assistant's first token after each judging request (a user
    message, chat template applied): -> (N,) fp32 on the CPU. > 0 means the model prefers A.

    Notebook: 06_dpo_grpo.ipynb
    """
    device = next(model.parameters()).device
    id_a, id_b = choice_token_ids(tokenizer)
    model.eval()
    margins = []
    for start in range(0, len(requests), batch_size):
        ids, mask = encode_prompts(tokenizer, requests[start : start + batch_size])  # (b, P) left-padded
        ids, mask = ids.to(device), mask.to(device)
        with autocast_ctx or contextlib.nullcontext():
            logits = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=position_ids_from_mask(mask),
                use_cache=False,
                logits_to_keep=1,
            ).logits[:, -1]  # (b, V): the next token
        logps = torch.log_softmax(logits.float(), dim=-1)  # (b, V)
        margins.append((logps[:, id_a] - logps[:, id_b]).cpu())  # (b,)
    return torch.cat(margins)  # (N,)


def ai_preferences(model, tokenizer, rows: list[dict], batch_size: int = 8, autocast_ctx=None) -> dict:
    """The AI judge on preference rows {prompt, chosen, rejected, chosen_eos?, rejected_eos?}, each
    shown in both orders. Returns (N,) tensors:

    - "first":  margin with `chosen` shown as A;  "second": margin with `chosen` shown as B;
    - "preference" = (first - second) / 2: > 0 when the judge prefers `chosen` whatever its side;
    - "position_bias" = (first + second) / 2: the judge's pull toward A (log-odds), which the
      difference above cancels when it is the same in both orders.

    Notebook: 06_dpo_grpo.ipynb
    """
    forward, backward = [], []
    for r in rows:
        ce, re_ = r.get("chosen_eos", True), r.get("rejected_eos", True)
        forward.append(judge_prompt(r["prompt"], r["chosen"], r["rejected"], ce, re_))
        backward.append(judge_prompt(r["prompt"], r["rejected"], r["chosen"], re_, ce))
    margins = judge_margins(model, tokenizer, forward + backward, batch_size, autocast_ctx)  # (2N,)
    first, second = margins[: len(rows)], margins[len(rows) :]  # (N,), (N,)
    return {"first": first, "second": second, "preference": (first - second) / 2, "position_bias": (first + second) / 2}


def relabel(rows: list[dict], preference: torch.Tensor) -> list[dict]:
    """The rows with chosen and rejected swapped where `preference` < 0 (the judge's labels); a
    preference of exactly 0 keeps the row as it is. Notebook: 06_dpo_grpo.ipynb"""
    if len(rows) != len(preference):
        raise ValueError(f"{len(rows)} rows but {len(preference)} preferences")
    out = []
    for r, p in zip(rows, preference.tolist()):
        if p >= 0:
            out.append(dict(r))
        else:
            out.append(
                {
                    **r,
                    "chosen": r["rejected"],
                    "rejected": r["chosen"],
                    "chosen_eos": r.get("rejected_eos", True),
                    "rejected_eos": r.get("chosen_eos", True),
                }
            )
    return out
