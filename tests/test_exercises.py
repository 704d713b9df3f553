"""The exercise checkers: the library's own functions pass every reference case, and each checker
catches plausible wrong answers (off by one, wrong sign, mask forgotten), naming the failed case."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rlhf_edu import (
    ab_eval,
    annotator,
    dpo,
    exercises,
    grpo,
    logprobs,
    metrics,
    ppo,
    reward,
    rubric,
    scale,
    sft,
    tradeoffs,
)

LIBRARY = {
    "response_mask_from_eos": logprobs.response_mask_from_eos,
    "mean_and_se": metrics.mean_and_se,
    "sft_loss": sft.sft_loss,
    "next_token_logps": lambda logits, ids: logprobs.selective_log_softmax(logits[:, :-1], ids[:, 1:]),
    "preference_probability": annotator.preference_probability,
    "wilson_interval": metrics.wilson_interval,
    "reward_loss": reward.reward_loss,
    "last_token_index": logprobs.last_token_index,
    "per_token_rewards": lambda *a: ppo.per_token_rewards(*a)[0],
    "compute_gae": ppo.compute_gae,
    "clipped_policy_loss": lambda *a: ppo.clipped_policy_loss(*a)[0],
    "clipped_value_loss": lambda *a: ppo.clipped_value_loss(*a)[0],
    "bon_kl_bound": tradeoffs.bon_kl_bound,
    "bon_weights": tradeoffs.bon_weights,
    "dpo_loss": lambda *a: dpo.dpo_loss(*a)[0],
    "group_advantages": grpo.group_advantages,
    "talks_to_child_reward": lambda prompts, texts, eos: torch.tensor(
        [rubric.speaks_to_child_score(t) if e else 0.0 for t, e in zip(texts, eos)]
    ),
    "paired_z": lambda after, before: metrics.paired_difference(after, before)["z"],
    "win_rate": ab_eval.win_rate,
    "trl_grpo_batches": scale.grpo_batches,
    "eos_flags": scale.eos_flags,
}


def _wald(successes, n, z=1.959964):
    p = successes / n
    half = z * math.sqrt(p * (1 - p) / n)
    return max(0.0, p - half), min(1.0, p + half)


def _first_eos_excluded(ids, eos):
    is_eos = (ids == eos).long()
    return (is_eos.cumsum(1) == 0).long()


def _last_eos(ids, eos):
    is_eos = (ids == eos).long()
    after_last = is_eos.flip(1).cumsum(1).flip(1) - is_eos
    return (after_last > 0).long() | (is_eos.sum(1, keepdim=True) == 0).long() | is_eos


def _gae_bootstrapping_from_padding(rewards, values, mask, gamma, lam):
    n = rewards.shape[1]
    adv, next_adv = torch.zeros_like(values), torch.zeros_like(values[:, 0])
    for t in reversed(range(n)):
        next_value = values[:, t + 1] if t + 1 < n else torch.zeros_like(values[:, 0])
        next_adv = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * next_adv
        adv[:, t] = next_adv
    return adv * mask, (adv + values) * mask


WRONG = {
    "response_mask_from_eos": {"EOS left out": _first_eos_excluded, "the last EOS": _last_eos},
    "mean_and_se": {
        "population sd": lambda v: (sum(v) / len(v), torch.tensor(v).std(unbiased=False).item() / math.sqrt(len(v))),
        "sd over n": lambda v: (sum(v) / len(v), torch.tensor(v).std().item() / len(v)),
    },
    "sft_loss": {
        "mask forgotten": lambda lp, m: -lp.mean(),
        "mean of row means": lambda lp, m: -((lp * m).sum(1) / m.sum(1)).mean(),
        "wrong sign": lambda lp, m: (lp * m).sum() / m.sum(),
    },
    "next_token_logps": {
        "no shift": lambda lg, ids: lg[:, 1:].log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0],
        "probabilities": lambda lg, ids: lg[:, :-1].softmax(-1).gather(-1, ids[:, 1:, None])[..., 0],
    },
    "preference_probability": {
        "sign flipped": lambda a, b, t: annotator.preference_probability(b, a, t),
        "times the temperature": lambda a, b, t: 1 / (1 + math.exp(-(a - b) * t)),
    },
    "wilson_interval": {"the Wald interval": _wald},
    "reward_loss": {
        "wrong sign": lambda c, r: -F.logsigmoid(r - c).mean(),
        "sum over pairs": lambda c, r: -F.logsigmoid(c - r).sum(),
        "log of sigmoid": lambda c, r: -torch.log(torch.sigmoid(c - r)).mean(),
    },
    "last_token_index": {
        "mask.sum() - 1": lambda m: m.sum(1) - 1,
        "the first padding position": lambda m: m.sum(1),
    },
    "per_token_rewards": {
        "score on the last column": lambda s, lp, ref, m, b: (-b * (lp - ref) * m).index_put_(
            (torch.arange(len(s)), torch.full((len(s),), lp.shape[1] - 1)), s, accumulate=True
        ),
        "KL sign flipped": lambda s, lp, ref, m, b: ppo.per_token_rewards(s, ref, lp, m, b)[0],
    },
    "compute_gae": {
        "bootstrapping from padding": _gae_bootstrapping_from_padding,
        "lam ignored": lambda r, v, m, g, lam: ppo.compute_gae(r, v, m, g, 1.0),
    },
    "clipped_policy_loss": {
        "min instead of max": lambda lp, old, a, m, c: logprobs.masked_mean(
            torch.min(-a * (lp - old).exp(), -a * (lp - old).exp().clamp(1 - c, 1 + c)), m
        ),
        "no clip": lambda lp, old, a, m, c: logprobs.masked_mean(-a * (lp - old).exp(), m),
        "mask forgotten": lambda lp, old, a, m, c: torch.max(
            -a * (lp - old).exp(), -a * (lp - old).exp().clamp(1 - c, 1 + c)
        ).mean(),
    },
    "clipped_value_loss": {
        "no clip": lambda v, old, r, m, c: 0.5 * logprobs.masked_mean((v - r) ** 2, m),
        "min instead of max": lambda v, old, r, m, c: (
            0.5 * logprobs.masked_mean(torch.min((v - r) ** 2, (old + (v - old).clamp(-c, c) - r) ** 2), m)
        ),
    },
    "bon_kl_bound": {"log n": lambda n: math.log(n)},
    "bon_weights": {"with replacement": lambda N, n: [(i / N) ** n - ((i - 1) / N) ** n for i in range(1, N + 1)]},
    "dpo_loss": {
        "reference forgotten": lambda pc, pr, rc, rr, b: -F.logsigmoid(b * (pc - pr)).mean(),
        "beta outside": lambda pc, pr, rc, rr, b: -(b * F.logsigmoid((pc - rc) - (pr - rr))).mean(),
        "wrong sign": lambda pc, pr, rc, rr, b: -F.logsigmoid(-b * ((pc - rc) - (pr - rr))).mean(),
    },
    "group_advantages": {
        "population std": lambda r: (r - r.mean(1, keepdim=True)) / (r.std(1, unbiased=False, keepdim=True) + 1e-4),
        "no eps": lambda r: (r - r.mean(1, keepdim=True)) / r.std(1, keepdim=True),
        "whole batch": lambda r: (r - r.mean()) / (r.std() + 1e-4),
    },
    "talks_to_child_reward": {
        "eos ignored": lambda p, texts, eos: torch.tensor([rubric.speaks_to_child_score(t) for t in texts]),
        "any you": lambda p, texts, eos: torch.tensor([float("you" in t.lower() and e) for t, e in zip(texts, eos)]),
    },
    "paired_z": {
        "unpaired": lambda a, b: (
            (sum(a) / len(a) - sum(b) / len(b))
            / math.sqrt(metrics.mean_and_se(a)[1] ** 2 + metrics.mean_and_se(b)[1] ** 2)
        ),
    },
    "win_rate": {
        "ties dropped": lambda w, t, n: (w / (n - t), metrics.wilson_interval(w, n - t)),
        "ties as losses": lambda w, t, n: (w / n, metrics.wilson_interval(w, n)),
    },
    "trl_grpo_batches": {
        "epochs forgotten": lambda s, p, k, m, e: (p * k, s * (p * k // m)),
        "minibatch of prompts": lambda s, p, k, m, e: (p * k, s * max(1, p // m) * e),
    },
    "eos_flags": {
        "an empty answer counted as ended": lambda ids, eos: [not ids_ or ids_[-1] == eos for ids_ in ids],
        "short means ended": lambda ids, eos: [len(ids_) < 4 for ids_ in ids],
    },
}


def test_every_exercise_has_a_library_reference_and_wrong_answers():
    assert set(LIBRARY) == set(exercises.CASES) == set(WRONG)
    assert all(hasattr(exercises, f"check_{name}") for name in exercises.CASES)


@pytest.mark.parametrize("name", sorted(exercises.CASES))
def test_the_library_passes_every_case(name, capsys):
    assert bool(exercises.CHECKS[name](LIBRARY[name])) is True
    assert "cases pass" in capsys.readouterr().out


@pytest.mark.parametrize("name,wrong", [(n, w) for n in sorted(WRONG) for w in WRONG[n]])
def test_a_wrong_answer_fails_with_the_case_named(name, wrong):
    with pytest.raises(exercises.ExerciseFailed) as err:
        exercises.CHECKS[name](WRONG[name][wrong])
    message = str(err.value)
    assert f"{name}: case '" in message and "expected" in message and "got" in message


def test_a_stub_is_reported_as_not_done_and_does_not_raise(capsys):
    def stub(*args):
        raise NotImplementedError

    assert bool(exercises.check_reward_loss(stub)) is False
    assert bool(exercises.check_reward_loss(lambda *a: None)) is False
    assert "not done yet" in capsys.readouterr().out


def test_an_error_in_the_learners_code_names_the_case_and_the_hint():
    naive = lambda a, b, t: 1 / (1 + math.exp(-(a - b) / t))  # overflows for large negative gaps
    with pytest.raises(exercises.ExerciseFailed, match=r"case 'far apart' raised OverflowError.*\n  hint: math.exp"):
        exercises.check_preference_probability(naive)


def test_a_result_of_the_wrong_shape_fails():
    with pytest.raises(exercises.ExerciseFailed, match="one answer"):
        exercises.check_per_token_rewards(lambda s, lp, ref, m, b: ppo.per_token_rewards(s, lp, ref, m, b))


NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_has_two_code_exercises_whose_solutions_pass(path, capsys):
    """A stub cell (the learner's function, then its check) followed by a collapsed solution cell that
    asserts the check; the stub alone is reported as not done and does not stop Run All."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    stubs = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and "# your code here" in "".join(c["source"])]
    assert len(stubs) >= 2, f"{path.name} has {len(stubs)} code exercises"
    for i in stubs:
        solution = cells[i + 1]
        assert solution["metadata"].get("jupyter", {}).get("source_hidden") is True, (
            f"{path.name}: solution not collapsed"
        )
        assert "solution" in solution["metadata"].get("tags", [])
        namespace = {}
        exec("".join(cells[i]["source"]), namespace)  # noqa: S102 (the notebook's own cell)
        assert "not done yet" in capsys.readouterr().out
        exec("".join(solution["source"]), namespace)  # noqa: S102
        assert "cases pass" in capsys.readouterr().out
