"""A second AI judge for small models: a constitution read from log-probs.

Asked "Which answer is better, A or B?", a 135M model mostly answers with its position bias
(`final_eval.ai_preferences` measures it). It has never been taught to judge. What it can do is
model text: given a request, how likely is each answer? A constitution changes the request, not the
question: append the principles a parent would state ("talk to me as you, compare it with something
from my day"), and an answer that follows them becomes *more likely* under the guided request than
under the plain one. The judge's score of an answer y to a prompt x is that gain,

    g(x, y) = log pi(y | x + constitution) - log pi(y | x)        (summed over y's tokens and EOS)

and its preference between two answers is g(x, y_1) - g(x, y_2). Each answer is scored on its own,
so there is no position to be biased toward; the plain term cancels what makes an answer likely
anyway (short, common words), leaving what the constitution adds. The same contrast of a principled
and a plain prompt underlies RLCD (Yang et al. 2023, "RLCD: Reinforcement Learning from Contrastive
Distillation") and the context distillation of Askell et al. (2021); DPO's implicit reward (notebook
06, section 4) is a log-ratio of the same kind.

Whether the log-probs of a small model carry the preference is an empirical question that notebook
06 measures; a judge that does worse than chance is a finding, not a bug to hide.

Notebook: 06_dpo_grpo.ipynb
"""

from __future__ import annotations

import torch

CONSTITUTION = (
    'Explain it the way a good parent would: talk to me as "you", compare it with something from '
    "everyday life (\"It's like ...\"), and mention a thing from a child's day, like school, lunch or a bike."
)


def guided_prompt(prompt: str, constitution: str = CONSTITUTION) -> str:
    """The request with the constitution appended."""
    return f"{prompt} {constitution}"


def response_logps(
    model, tokenizer, rows: list[dict], batch_size: int = 16, autocast_ctx=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probs (temperature 1) of both sides of preference rows {prompt, chosen, rejected,
    chosen_eos?, rejected_eos?}: -> (chosen (N,), rejected (N,)) fp32 on the CPU (`dpo.rows_logps`)."""
    from rlhf_edu.dpo import rows_logps

    return rows_logps(model, tokenizer, rows, batch_size, 1024, autocast_ctx)


def constitution_preferences(
    model, tokenizer, rows: list[dict], constitution: str = CONSTITUTION, batch_size: int = 16, autocast_ctx=None
) -> dict[str, torch.Tensor]:
    """The constitution judge on preference rows. Returns (N,) tensors:

    - "chosen_gain", "rejected_gain": g(x, y) of each side (nats);
    - "preference" = chosen_gain - rejected_gain: > 0 when the judge prefers `chosen`.
    """
    plain_c, plain_r = response_logps(model, tokenizer, rows, batch_size, autocast_ctx)
    guided = [dict(r, prompt=guided_prompt(r["prompt"], constitution)) for r in rows]
    guided_c, guided_r = response_logps(model, tokenizer, guided, batch_size, autocast_ctx)
    chosen_gain, rejected_gain = guided_c - plain_c, guided_r - plain_r
    return {"chosen_gain": chosen_gain, "rejected_gain": rejected_gain, "preference": chosen_gain - rejected_gain}
