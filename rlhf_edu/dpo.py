"""Direct Preference Optimization (DPO), with IPO and conservative (label-smoothed) DPO as options.

Algorithm: DPO (Rafailov et al. 2023, arXiv 2305.18290, eq. 7) trains the policy directly on
preference pairs, with no reward model and no sampling. The policy's log-ratio to a frozen
reference is an implicit reward, r(x, y) = beta * log(pi(y|x) / pi_ref(y|x)), and the
Bradley-Terry loss of the reward model (reward.py, eq. 2) is applied to it:

    z = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))                  (1)
    DPO:  loss = -log sigmoid(beta * z)                                                     (2)
    cDPO: loss = -(1 - eps) log sigmoid(beta * z) - eps log sigmoid(-beta * z)             (3)
    IPO:  loss = (z - 1 / (2 beta))^2                                                       (4)

(1)-(3) follow the original DPO repo's `preference_loss`, N+ and OpenRLHF
(docs/implementation_details.md#dpo); (4) is eq. 17 of Azar et al. 2023 (arXiv 2310.12036), which
regresses the log-ratio gap onto 1 / (2 beta) instead of pushing it to infinity. tests/test_dpo.py
asserts the values of docs/implementation_details.md#dpo-tests.

log pi(y) is a sequence log-prob: the SUM of per-token log-probs over the response tokens and the
EOS (`response_mask`), never over the prompt or padding, and never a mean (averaging
degenerates, TRL #789). The reference log-probs are computed once, before training
(`precompute_reference_logps`), in the same dtype as the policy (DPO repo #34).

Deliberate choices and deviations:
- IPO uses the unnormalized sequence log-ratios, as the original DPO repo and OpenRLHF do; current
  TRL divides them by the response length.
- Label smoothing is the cDPO form (3) (TRL <= 0.11 "sigmoid"), not TRL's newer "robust" loss; it is
  not defined for IPO, which raises.
- `rewards/accuracies` counts a tie (margin exactly 0, as at initialization) as half a win, like
  `reward.reward_accuracy`; TRL counts it as a loss.
- No NLL (RPO) term: the chosen log-prob is free to fall while the margin grows
  (docs/implementation_details.md#dpo), and `logps/chosen` in the history shows it.

Notebook: 06_dpo_grpo.ipynb. Legend: B pairs, P prompt tokens, R response tokens.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rlhf_edu.batches import build_pair_batch
from rlhf_edu.checkpoints import (
    checkpoint_if_due,
    load_causal_lm_weights,
    resume_training,
    rows_fingerprint,
    save_checkpoint,
)
from rlhf_edu.logprobs import masked_sum, per_token_logps
from rlhf_edu.reward import reward_accuracy
from rlhf_edu.store import jsonable
from rlhf_edu.training import (
    adamw_with_schedule,
    check_finite,
    clip_and_step,
    end_of_run,
    freeze_lower_layers,
    pair_batch_indices,
    total_steps,
)

LOSS_TYPES = ("sigmoid", "ipo")


# --------------------------------------------------------------------------- the math


def sequence_logps(per_token_logps: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """log pi(y | x) of whole responses: per_token_logps (B, R), response_mask (B, R) -> (B,).

    A sum over response tokens (and the EOS); prompt and padding contribute nothing, whatever
    they hold (docs/implementation_details.md#dpo-tests).

    Notebook: 06_dpo_grpo.ipynb
    """
    return masked_sum(per_token_logps, response_mask.to(per_token_logps.dtype), dim=1)  # (B,)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO (2), cDPO (3) or IPO (4) on sequence log-probs, each (B,) -> (loss, chosen_rewards,
    rejected_rewards).

    Computed in the inputs' dtype (fp32 from `per_token_logps`). loss is the mean over pairs; the
    implicit rewards beta * (log pi - log pi_ref) are (B,) and detached, for logging: their
    difference, the margin, is beta * z.
    `label_smoothing` eps in [0, 0.5) is the assumed probability that a label is flipped (cDPO).
    At initialization (policy == reference) the loss is log 2 for every eps, and 25.0 for IPO at
    beta 0.1.

    Notebook: 06_dpo_grpo.ipynb
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if loss_type == "ipo" and label_smoothing > 0:
        raise ValueError("label_smoothing is the cDPO form of the sigmoid loss; IPO has none")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    chosen_log_ratio = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected_log_ratio = policy_rejected_logps - ref_rejected_logps  # (B,)
    z = chosen_log_ratio - rejected_log_ratio  # (B,) eq. (1)
    if loss_type == "sigmoid":
        # logsigmoid is stable where log(sigmoid(.)) underflows; eps = 0 gives plain DPO, eq. (2)
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * z) - label_smoothing * F.logsigmoid(-beta * z)
    else:
        losses = (z - 1.0 / (2.0 * beta)) ** 2  # (B,) eq. (4)
    chosen_rewards = beta * chosen_log_ratio.detach()  # (B,)
    rejected_rewards = beta * rejected_log_ratio.detach()  # (B,)
    return losses.mean(), chosen_rewards, rejected_rewards


# --------------------------------------------------------------------------- config and data


@dataclass(frozen=True)
class DPOConfig:
    """DPO settings (docs/implementation_details.md#dpo)."""

    beta: float = 0.1
    """Strength of the implicit KL constraint to the reference (TRL default 0.1; N+ TL;DR 0.05).
    Small beta lets the policy move far from the reference; IPO's target gap is 1 / (2 beta)."""
    loss_type: str = "sigmoid"
    """"sigmoid" (DPO, with optional label smoothing) or "ipo"."""
    label_smoothing: float = 0.0
    """cDPO: the assumed share of flipped labels, in [0, 0.5); 0 is plain DPO."""
    lr: float = 1e-5
    """Peak AdamW learning rate (TRL 1e-6 and the DPO repo 5e-7 for larger models and batches)."""
    batch_size: int = 8
    """Preference pairs per optimizer step (2 x batch_size sequences per forward pass)."""
    epochs: int = 1
    """Passes over the pairs."""
    max_steps: int | None = None
    """Optimizer steps; None means `epochs` passes over the data."""
    warmup_steps: int = 0
    """Linear warm-up from 0 to `lr`, then linear decay to 0 at the last step (DPO repo: 150)."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm (DPO repo: 10)."""
    max_response_tokens: int = 96
    """Longer responses are an error (they would be cut before their EOS)."""
    seed: int = 0
    """Order in which the pairs are visited."""
    trainable_layers: int | None = None
    """Train only the top this-many transformer blocks (plus the final norm); None trains all."""
    init_tolerance: float | None = None
    """Health check at the first step, where the policy still is the reference: the largest |log pi(y)
    - log pi_ref(y)| per response token allowed before warning; None takes `DeviceSetup.logp_tolerance`."""

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.loss_type == "ipo" and self.label_smoothing > 0:
            raise ValueError("label_smoothing applies to loss_type 'sigmoid' only (cDPO)")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError(f"batch_size and epochs must be >= 1, got {self.batch_size}, {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be None or >= 1, got {self.max_steps}")
        if self.lr < 0:
            raise ValueError(f"lr must be >= 0, got {self.lr}")


def pair_batch(tokenizer, rows: list[dict], max_response_tokens: int) -> dict:
    """`batches.build_pair_batch` for rows {prompt, chosen, rejected, chosen_eos?, rejected_eos?}:
    2B sequences, rows 0..B-1 chosen, B..2B-1 rejected, in the course layout."""
    return build_pair_batch(
        tokenizer,
        [r["prompt"] for r in rows],
        [r["chosen"] for r in rows],
        [r["rejected"] for r in rows],
        max_response_tokens,
        chosen_eos=[r.get("chosen_eos", True) for r in rows],
        rejected_eos=[r.get("rejected_eos", True) for r in rows],
    )


def pair_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probs of both sides of a `pair_batch`: -> (chosen (B,), rejected (B,)) fp32.

    One forward pass over the 2B sequences; temperature 1 (DPO does not sample). Notebook: 06_dpo_grpo.ipynb
    """
    device = next(model.parameters()).device
    logps = per_token_logps(
        model, batch["input_ids"].to(device), batch["attention_mask"].to(device), batch["context_length"]
    )  # (2B, R)
    logps = sequence_logps(logps, batch["response_mask"].to(device))  # (2B,)
    n = logps.shape[0] // 2
    return logps[:n], logps[n:]  # (B,), (B,)


def check_start_at_reference(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    n_tokens: torch.Tensor,
    loss: float,
    config: DPOConfig,
    tolerance: float,
) -> float:
    """The step-0 health check: the policy still is the reference, so every log-ratio is 0, the
    implicit rewards and margins are 0 and the loss is its value at z = 0 (log 2 for DPO and cDPO,
    (1 / (2 beta))^2 for IPO; docs/implementation_details.md#dpo-tests).

    policy_logps, ref_logps, n_tokens (2B,) -> the largest |log pi(y) - log pi_ref(y)| per response
    token, with a warning past `tolerance`: the reference log-probs then come from other weights,
    other rows or another dtype (DPO repo #34), and the implicit rewards start off 0.
    """
    deviation = float(((policy_logps.detach() - ref_logps).abs() / n_tokens.clamp(min=1)).max())
    if deviation > tolerance:
        zero = torch.zeros(1)
        at_zero = float(dpo_loss(zero, zero, zero, zero, config.beta, config.loss_type, config.label_smoothing)[0])
        warnings.warn(
            f"DPO step 0: the policy's log-probs differ from the reference log-probs by up to "
            f"{deviation:.2e} nats per token (> {tolerance:g}) where the policy should still be the "
            f"reference, so the implicit rewards are not 0 and the loss is {loss:.4f}, not {at_zero:.4f}. "
            f"Were the reference log-probs computed from the policy's starting weights, on these rows, "
            f"in the same dtype? (Ignore this if the policy deliberately starts elsewhere.)",
            stacklevel=3,
        )
    return deviation


@torch.no_grad()
def precompute_reference_logps(
    reference, tokenizer, rows: list[dict], config: DPOConfig, *, setup=None
) -> dict[str, torch.Tensor]:
    """log pi_ref of every chosen and rejected response, once: -> {"chosen": (N,), "rejected": (N,)}.

    Row i of the result belongs to rows[i]; `train_dpo` must get the same rows in the same order.
    Computed without gradients, dropout off, under the same autocast as training, so that at step 0
    the policy's log-probs equal these (to rounding) and the loss is log 2 (DPO repo #34).

    Notebook: 06_dpo_grpo.ipynb
    """
    from rlhf_edu.devices import autocast, device_setup
    from rlhf_edu.models import disable_dropout

    disable_dropout(reference)
    chosen, rejected = rows_logps(
        reference, tokenizer, rows, config.batch_size, config.max_response_tokens, autocast(setup or device_setup())
    )
    return {"chosen": chosen, "rejected": rejected}  # (N,), (N,)


@torch.no_grad()
def rows_logps(
    model, tokenizer, rows: list[dict], batch_size: int, max_response_tokens: int, autocast_ctx=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probs (temperature 1) of both sides of preference rows, in batches, the model in
    eval mode: -> (chosen (N,), rejected (N,)) fp32 on the CPU. Also the AI judge's (`rlhf_edu.ai_judge`)."""
    import contextlib

    model.eval()
    chosen, rejected = [], []
    for start in range(0, len(rows), batch_size):
        batch = pair_batch(tokenizer, rows[start : start + batch_size], max_response_tokens)
        with autocast_ctx or contextlib.nullcontext():
            c, r = pair_logps(model, batch)  # (b,), (b,)
        chosen.append(c.float().cpu())
        rejected.append(r.float().cpu())
    return torch.cat(chosen), torch.cat(rejected)


# --------------------------------------------------------------------------- training


def train_dpo(
    policy,
    reference_logps: dict[str, torch.Tensor],
    tokenizer,
    rows: list[dict],
    config: DPOConfig,
    *,
    setup=None,
    on_step=None,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
) -> list[dict]:
    """Train `policy` in place on preference rows with DPO / cDPO / IPO; return one record per step.

    `reference_logps` comes from `precompute_reference_logps` on the same `rows`. Records hold
    `train/loss`, `rewards/chosen`, `rewards/rejected` (mean implicit rewards), `rewards/margins`,
    `rewards/accuracies` (share of pairs with a positive margin, ties half), `logps/chosen`,
    `logps/rejected` (mean policy sequence log-probs), `train/lr` and `train/grad_norm`, all
    measured on the step's batch before its update. `on_step(step, record)` is called after each
    step (a `plots.LivePlot.update` fits). At the first step it warns when the policy's log-probs
    are not the reference's (`check_start_at_reference`). `checkpoint_dir` and `checkpoint_every`
    work as in `sft.train_sft`: a call with the same folder, config, rows and reference log-probs
    resumes the run and ends as an uninterrupted one.

    Notebook: 06_dpo_grpo.ipynb
    """
    from rlhf_edu.devices import autocast, device_setup
    from rlhf_edu.models import disable_dropout

    if not rows:
        raise ValueError("train_dpo needs at least one preference pair")
    n_ref = {k: len(v) for k, v in reference_logps.items()}
    if n_ref != {"chosen": len(rows), "rejected": len(rows)}:
        raise ValueError(f"reference_logps has {n_ref} entries for {len(rows)} rows; precompute them on these rows")
    setup = setup or device_setup()
    autocast_ctx = autocast(setup)
    device = next(policy.parameters()).device
    max_steps = total_steps(config, len(rows))
    tolerance = setup.logp_tolerance if config.init_tolerance is None else config.init_tolerance
    disable_dropout(policy)
    freeze_lower_layers(policy, config.trainable_layers)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer, scheduler, scaler = adamw_with_schedule(
        trainable, setup, lr=config.lr, max_steps=max_steps, warmup_steps=config.warmup_steps
    )
    reference = torch.cat([reference_logps["chosen"], reference_logps["rejected"]]).tolist()
    run = {"stage": "DPO", "config": jsonable(config), "data": rows_fingerprint([*rows, {"reference": reference}])}
    start, history = resume_training(
        checkpoint_dir, run, optimizer, scheduler, scaler, partial(load_causal_lm_weights, policy), on_step
    )
    batches = itertools.islice(pair_batch_indices(len(rows), config.batch_size, config.seed), start, None)
    for step in tqdm(range(start, max_steps), desc="DPO", initial=start, total=max_steps, disable=not progress):
        # 1. Next batch of pairs (a fresh shuffle at each epoch; the last batch may be smaller).
        index = next(batches)
        batch = pair_batch(tokenizer, [rows[i] for i in index], config.max_response_tokens)
        ref_chosen = reference_logps["chosen"][index].to(device)  # (B,)
        ref_rejected = reference_logps["rejected"][index].to(device)  # (B,)
        # 2. Policy sequence log-probs of both sides in one forward pass.
        policy.train()
        with autocast_ctx:
            chosen_logps, rejected_logps = pair_logps(policy, batch)  # (B,), (B,)
        # 3. The DPO / cDPO / IPO loss on the log-ratios to the reference, eq. (1)-(4).
        loss, chosen_rewards, rejected_rewards = dpo_loss(
            chosen_logps,
            rejected_logps,
            ref_chosen,
            ref_rejected,
            config.beta,
            config.loss_type,
            config.label_smoothing,
        )
        check_finite("the DPO loss", loss.detach(), step, "DPO")
        if step == 0:  # health check: the policy still is the reference
            n_tokens = batch["response_mask"].sum(dim=1).to(device)  # (2B,) chosen rows, then rejected
            check_start_at_reference(
                torch.cat([chosen_logps, rejected_logps]),
                torch.cat([ref_chosen, ref_rejected]),
                n_tokens,
                loss.item(),
                config,
                tolerance,
            )
        # 4. Backward, clip, step (with fp16's grad scaler, a non-finite norm only skips the step).
        scaler.scale(loss).backward()
        grad_norm = clip_and_step(optimizer, scaler, trainable, config.max_grad_norm, step, "DPO")
        record = {
            "step": step + 1,
            "train/loss": loss.item(),
            "rewards/chosen": float(chosen_rewards.mean()),
            "rewards/rejected": float(rejected_rewards.mean()),
            "rewards/margins": float((chosen_rewards - rejected_rewards).mean()),
            "rewards/accuracies": reward_accuracy(chosen_rewards, rejected_rewards),
            "logps/chosen": float(chosen_logps.detach().mean()),
            "logps/rejected": float(rejected_logps.detach().mean()),
            "train/lr": scheduler.get_last_lr()[0],
            "train/grad_norm": float(grad_norm),
        }
        scheduler.step()
        history.append(record)
        if on_step is not None:
            on_step(step + 1, record)
        # 5. Checkpoint now and then, and at the end.
        checkpoint_if_due(
            checkpoint_dir,
            checkpoint_every,
            max_steps,
            lambda folder: save_checkpoint(policy, tokenizer, folder),
            optimizer,
            scheduler,
            scaler,
            {**run, "step": step + 1, "history": history},
        )
    policy.eval()
    end_of_run(on_step)
    return history
