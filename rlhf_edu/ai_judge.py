"""AI feedback on a small model: two judges, and what each measures (notebook 06).

The question judge (`judge_margins`, `ai_preferences`) is the offline stand-in for the AI feedback
of Bai et al. (2022, "Constitutional AI") and Lee et al. (2023, "RLAIF"): it reads a prompt that
lists the rubric's criteria and both answers, and its preference is log p("A") - log p("B") for the
next token. Each pair is shown in both orders and the two margins are differenced, which cancels a
constant position bias (Zheng et al. 2023, "Judging LLM-as-a-judge with MT-Bench and Chatbot
Arena", who swap positions for the same reason).

The constitution judge (`constitution_preferences`) reads a constitution from log-probs. Asked
"Which answer is better, A or B?", a 135M model mostly answers with its position bias
(`ai_preferences` measures it). It has never been taught to judge. What it can do is
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

import contextlib

import torch

from rlhf_edu.generation import encode_prompts
from rlhf_edu.logprobs import (
    position_ids_from_mask,
)

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
