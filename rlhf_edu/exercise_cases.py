"""The reference cases of the notebooks' code exercises (`rlhf_edu.exercises` runs them).

Expected values are worked out by hand in the comments; tests/test_exercises.py checks that the
library's own functions pass every case and that plausible wrong answers fail one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Case:
    """One reference case: `args()` builds fresh inputs; `expected` is the reference value (a number,
    a list or nested list of numbers, or a tuple of those for a function that returns several)."""

    name: str
    args: Callable[[], tuple]
    expected: object
    hint: str = ""


def _t(x, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(x, dtype=dtype)


def _long(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.long)


# The cases. Expected values are worked out by hand in the comments; the test suite checks that the
# library's functions pass every one.
CASES: dict[str, list[Case]] = {
    # 00: the response mask, from the first EOS (eos id 2)
    "response_mask_from_eos": [
        Case("EOS in the middle", lambda: (_long([[5, 6, 2, 7, 8]]), 2), [[1, 1, 1, 0, 0]], "the EOS itself is 1"),
        Case(
            "two EOS: the first ends the answer",
            lambda: (_long([[5, 2, 6, 2, 7]]), 2),
            [[1, 1, 0, 0, 0]],
            "everything after the FIRST EOS is 0",
        ),
        Case("no EOS: the whole row counts", lambda: (_long([[5, 6, 7]]), 2), [[1, 1, 1]]),
        Case("EOS first", lambda: (_long([[2, 5, 6], [5, 6, 2]]), 2), [[1, 0, 0], [1, 1, 1]]),
    ],
    # 00: mean and standard error; se = sd / sqrt(n) with the n - 1 sd
    "mean_and_se": [
        # mean 2.5; sd = sqrt(5 / 3) = 1.290994; se = 1.290994 / 2
        Case(
            "1, 2, 3, 4",
            lambda: ([1.0, 2.0, 3.0, 4.0],),
            [2.5, 0.645497],
            "divide the squares by n - 1, then sd by sqrt(n)",
        ),
        Case("no spread", lambda: ([0.5, 0.5, 0.5],), [0.5, 0.0]),
        Case("0 and 1", lambda: ([1.0, 0.0],), [0.5, 0.5]),  # var = 0.5 / 1; se = sqrt(0.5 / 2)
    ],
    # 01: completion-only SFT loss, a mean over every response token of the batch
    "sft_loss": [
        Case(
            "padding ignored",
            lambda: (_t([[-1.0, -2.0, -100.0]]), _long([[1, 1, 0]])),
            1.5,
            "padding positions must not count: use the mask",
        ),
        # 4 tokens of -1 and 1 token of -4: (4 + 4) / 5 tokens (a mean of row means would give 2.5)
        Case(
            "rows of different lengths",
            lambda: (_t([[-1.0] * 4, [-4.0, -8.0, -8.0, -8.0]]), _long([[1] * 4, [1, 0, 0, 0]])),
            1.6,
            "average over tokens, not over rows: every token counts the same",
        ),
        Case("sign", lambda: (_t([[-0.5, -0.5]]), _long([[1, 1]])), 0.5, "the loss is the NEGATIVE log-likelihood"),
    ],
    # 01: next-token log-probabilities, the shift: logits at t score the token at t + 1
    "next_token_logps": [
        # position 0 is uniform over 3 tokens -> log(1/3); position 1 gives token 1 probability 1/2
        Case(
            "the shift",
            lambda: (_t([[[0.0, 0.0, 0.0], [0.0, math.log(2), 0.0], [5.0, 0.0, 0.0]]]), _long([[0, 2, 1]])),
            [[-1.098612, -0.693147]],
            "logits[:, t] predict input_ids[:, t + 1]: drop the last logit and the first id",
        ),
        Case(
            "log-probabilities, not probabilities",
            lambda: (_t([[[0.0, 0.0], [1.0, 3.0]]]), _long([[1, 0]])),
            [[-0.693147]],
            "use log_softmax over the vocabulary",
        ),
    ],
    # 02: the Bradley-Terry annotator, sigmoid((gold_a - gold_b) / temperature)
    "preference_probability": [
        Case("equal answers", lambda: (0.7, 0.7, 0.02), 0.5),
        Case("A better by one temperature", lambda: (0.72, 0.70, 0.02), 0.731059, "sigmoid((a - b) / T)"),
        Case("B better", lambda: (0.6, 0.7, 0.05), 0.119203, "A's probability falls when B is better"),
        Case(
            "far apart", lambda: (0.0, 10.0, 0.01), 0.0, "math.exp(1000) overflows: use torch.sigmoid or a stable form"
        ),
    ],
    # 02 and 07: the Wilson 95% interval (z = 1.959964)
    "wilson_interval": [
        Case(
            "8 of 10",
            lambda: (8, 10),
            [0.490163, 0.943318],
            "p +- z sqrt(p(1-p)/n) is the Wald interval; Wilson recenters",
        ),
        Case("0 of 10", lambda: (0, 10), [0.0, 0.277533], "the interval never collapses to a point at 0"),
        Case("50 of 100", lambda: (50, 100), [0.403832, 0.596168]),
    ],
    # 03: the Bradley-Terry loss, mean of -log sigmoid(chosen - rejected)
    "reward_loss": [
        Case(
            "chosen ahead by 1", lambda: (_t([1.0]), _t([0.0])), 0.313262, "the loss is -log sigmoid(chosen - rejected)"
        ),
        Case("a tie", lambda: (_t([0.3]), _t([0.3])), 0.693147),
        Case("only differences matter", lambda: (_t([101.0, 100.0]), _t([100.0, 101.0])), 0.813262, "mean over pairs"),
        Case(
            "a confident mistake",
            lambda: (_t([0.0]), _t([200.0])),
            200.0,
            "log(sigmoid(-200)) underflows to -inf in float32: use F.logsigmoid",
        ),
    ],
    # 03: where the reward model reads its score: the last real token
    "last_token_index": [
        Case("right padding", lambda: (_long([[1, 1, 1, 0, 0]]),), [2]),
        Case(
            "left-padded prompt, right-padded answer",
            lambda: (_long([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]]),),
            [3, 4],
            "count from the mask's positions, not mask.sum() - 1: left padding shifts the answer",
        ),
        Case("no padding", lambda: (_long([[1, 1, 1]]),), [2]),
    ],
    # 04: per-token rewards, -kl_coef * (logp - ref_logp) on every token, plus the score on the last
    "per_token_rewards": [
        # k1 = [0.5, 0, -1]; -0.1 * k1 = [-0.05, 0, 0.1]; + 2 on the last token
        Case(
            "one answer",
            lambda: (_t([2.0]), _t([[-1.0, -2.0, -3.0]]), _t([[-1.5, -2.0, -2.0]]), _long([[1, 1, 1]]), 0.1),
            [[-0.05, 0.0, 2.1]],
            "reward_t = -kl_coef * (logp_t - ref_logp_t), and the score on the last token",
        ),
        # k1 = [0, -1]; -0.5 * k1 = [0, 0.5]; score 1 on token 1; padding 0
        Case(
            "padding",
            lambda: (_t([1.0]), _t([[-1.0, -2.0, -7.0]]), _t([[-1.0, -1.0, -1.0]]), _long([[1, 1, 0]]), 0.5),
            [[0.0, 1.5, 0.0]],
            "the score goes on the last REAL token, and padding gets 0",
        ),
    ],
    # 04: GAE, backwards from the last token; returns = advantages + values
    "compute_gae": [
        Case("one token", lambda: (_t([[1.0]]), _t([[0.5]]), _long([[1]]), 1.0, 0.95), ([[0.5]], [[1.0]])),
        # t=1: delta = 1 + 0 - 0.5 = 0.5; t=0: delta = 0 + 0.5 - 0.2 = 0.3, A = 0.3 + 0.95 * 0.5 = 0.775
        Case(
            "two tokens",
            lambda: (_t([[0.0, 1.0]]), _t([[0.2, 0.5]]), _long([[1, 1]]), 1.0, 0.95),
            ([[0.775, 0.5]], [[0.975, 1.0]]),
            "A_t = delta_t + gamma * lam * A_{t+1}",
        ),
        Case(
            "padding holds junk",
            lambda: (_t([[0.0, 1.0, 9.0]]), _t([[0.2, 0.5, 7.0]]), _long([[1, 1, 0]]), 1.0, 0.95),
            ([[0.775, 0.5, 0.0]], [[0.975, 1.0, 0.0]]),
            "after the last token V is 0: do not bootstrap from padding",
        ),
        Case(
            "lam = 0 is one-step TD",
            lambda: (_t([[0.0, 1.0]]), _t([[0.2, 0.5]]), _long([[1, 1]]), 1.0, 0.0),
            ([[0.3, 0.5]], [[0.5, 1.0]]),
        ),
    ],
    # 04: PPO's clipped surrogate, masked mean of max(-A * ratio, -A * clip(ratio))
    "clipped_policy_loss": [
        Case("ratio 1", lambda: (_t([[0.0, 0.0]]), _t([[0.0, 0.0]]), _t([[1.0, -1.0]]), _long([[1, 1]]), 0.2), 0.0),
        # ratio e^0.5 = 1.6487 with A = +1: clipped to 1.2 -> -1.2
        Case(
            "good action, ratio above the clip",
            lambda: (_t([[0.5]]), _t([[0.0]]), _t([[1.0]]), _long([[1]]), 0.2),
            -1.2,
            "with A > 0 the ratio's gain stops at 1 + eps",
        ),
        # with A = -1 the unclipped 1.6487 is the max: the pessimistic bound keeps it
        Case(
            "bad action, ratio above the clip",
            lambda: (_t([[0.5]]), _t([[0.0]]), _t([[-1.0]]), _long([[1]]), 0.2),
            1.648721,
            "take the max of the two losses (the min of the two objectives)",
        ),
        Case(
            "padding",
            lambda: (_t([[-0.5, 3.0]]), _t([[0.0, 0.0]]), _t([[1.0, 5.0]]), _long([[1, 0]]), 0.2),
            -0.606531,
            "a masked mean over real tokens",
        ),
    ],
    # 04: the clipped value loss, 0.5 * masked mean of max((V - R)^2, (V_clip - R)^2)
    "clipped_value_loss": [
        # V = 1 is exact, but V_clip = 0 + 0.2 gives (0.2 - 1)^2 = 0.64, the larger: 0.5 * 0.64
        Case(
            "value moved too far",
            lambda: (_t([[1.0]]), _t([[0.0]]), _t([[1.0]]), _long([[1]]), 0.2),
            0.32,
            "clip V to old +- c, and take the LARGER of the two errors",
        ),
        Case(
            "inside the clip",
            lambda: (_t([[0.1]]), _t([[0.0]]), _t([[1.0]]), _long([[1]]), 0.2),
            0.405,
            "0.5 * (V - R)^2",
        ),
        Case("padding", lambda: (_t([[0.1, 4.0]]), _t([[0.0, 0.0]]), _t([[1.0, -3.0]]), _long([[1, 0]]), 0.2), 0.405),
    ],
    # 05: the best-of-n KL bound, log n - (n - 1) / n
    "bon_kl_bound": [
        Case("n = 1 changes nothing", lambda: (1,), 0.0),
        Case("n = 2", lambda: (2,), 0.193147, "log n - (n - 1) / n, not log n"),
        Case("n = 16", lambda: (16,), 1.835089),
    ],
    # 05: order-statistic weights of best-of-n drawn without replacement from a pool of N
    "bon_weights": [
        Case("n = 1 is the mean", lambda: (4, 1), [0.25, 0.25, 0.25, 0.25]),
        Case("n = N is the top sample", lambda: (4, 4), [0.0, 0.0, 0.0, 1.0]),
        # the i-th smallest is the max of a pair when the other is below it: C(i - 1, 1) / C(4, 2)
        Case(
            "n = 2 of 4",
            lambda: (4, 2),
            [0.0, 1 / 6, 2 / 6, 3 / 6],
            "without replacement: C(i - 1, n - 1) / C(N, n); (i/N)^n - ((i-1)/N)^n draws with replacement",
        ),
    ],
    # 06: DPO, -log sigmoid(beta * ((pc - rc) - (pr - rr)))
    "dpo_loss": [
        Case(
            "policy = reference",
            lambda: (_t([-10.0]), _t([-12.0]), _t([-10.0]), _t([-12.0]), 0.1),
            0.693147,
            "at the start the loss is log 2 whatever the answers' likelihoods",
        ),
        # z = (-10 + 9) - (-12 + 13) = -2; -log sigmoid(-0.2)
        Case(
            "the reference matters",
            lambda: (_t([-10.0]), _t([-12.0]), _t([-9.0]), _t([-13.0]), 0.1),
            0.798139,
            "subtract the reference's log-probs from the policy's",
        ),
        Case(
            "beta inside the sigmoid",
            lambda: (_t([-8.0]), _t([-12.0]), _t([-10.0]), _t([-10.0]), 0.5),
            0.126928,
            "-log sigmoid(beta * z), not -beta * log sigmoid(z)",
        ),
    ],
    # 06: GRPO advantages, (r - group mean) / (group std + 1e-4), unbiased std
    "group_advantages": [
        Case(
            "one group",
            lambda: (_t([[1.0, 3.0, 2.0, 6.0]]),),
            [[-0.925777, 0.0, -0.462889, 1.388666]],
            "the std is unbiased (n - 1), as torch.std's default",
        ),
        Case(
            "identical rewards",
            lambda: (_t([[5.0, 5.0, 5.0]]),),
            [[0.0, 0.0, 0.0]],
            "add eps = 1e-4 to the std: no NaN",
        ),
        Case(
            "groups are separate",
            lambda: (_t([[0.0, 1.0], [10.0, 30.0]]),),
            [[-0.707007, 0.707007], [-0.707103, 0.707103]],
            "mean and std over each row (dim=1), not the whole batch",
        ),
    ],
    # 06: a verifiable reward function, (prompts, texts, eos_flags) -> (B,): 1 for a finished answer with a
    # sentence of five words or more that talks to the child, else 0 (the rubric's speaks_to_child)
    "talks_to_child_reward": [
        Case(
            "one of each",
            lambda: (
                ["Explain rain."] * 2,
                ["When you look up, rain falls on you.", "Rain falls from the clouds."],
                [True] * 2,
            ),
            [1.0, 0.0],
        ),
        Case(
            "a cut-off answer earns nothing",
            lambda: (["Explain rain."], ["When you look up at the sky you see"], [False]),
            [0.0],
            "look at eos_flags: an answer that never ended is not paid",
        ),
        Case(
            "'thank you' is not talking to the child",
            lambda: (["Explain rain."], ["Thank you for asking about the rain today."], [True]),
            [0.0],
            "use rlhf_edu.rubric.speaks_to_child_score rather than searching for 'you'",
        ),
    ],
    # 07: the paired z of a gain: mean of after - before over its standard error
    "paired_z": [
        # differences [1, 1, 1, 0]: mean 0.75, sd 0.5, se 0.25
        Case(
            "four prompts",
            lambda: ([1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.0, 4.0]),
            3.0,
            "pair the prompts: the se of the differences, not of each list",
        ),
        Case("a loss", lambda: ([0.0, 0.0, 1.0], [1.0, 1.0, 1.0]), -2.0),
    ],
    # 07: a win rate with ties counted half, and its Wilson interval: (rate, (low, high))
    "win_rate": [
        # 5 wins + half of 2 ties = 6 of 10: Wilson (0.312673, 0.831819)
        Case(
            "ties count half",
            lambda: (5, 2, 10),
            (0.6, (0.312673, 0.831819)),
            "a tie is half a win, in the interval too",
        ),
        Case("all ties", lambda: (0, 4, 4), (0.5, (0.150036, 0.849964))),
    ],
    # 08: the course's GRPO budget in TRL's counts: (generation_batch_size, optimizer steps)
    "trl_grpo_batches": [
        # 4 prompts x 4 answers = 16 a batch; minibatches of 4 -> 4 optimizer steps a batch; 8 batches
        Case("the cpu preset", lambda: (8, 4, 4, 4, 1), (16, 32), "TRL counts optimizer steps, one per minibatch"),
        Case(
            "two epochs", lambda: (8, 4, 4, 4, 2), (16, 64), "each epoch (num_iterations) steps through the batch again"
        ),
        # 2 prompts x 4 answers = 8; one minibatch of 8 -> 1 step a batch
        Case("one minibatch a batch", lambda: (2, 2, 4, 8, 1), (8, 2), "a minibatch counts answers, not prompts"),
    ],
    # 08: which answers ended by themselves (their ids end with EOS, id 2 here): 1 or 0 each
    "eos_flags": [
        Case("ended by itself", lambda: ([[5, 6, 2]], 2), [1.0]),
        Case("cut off at the budget", lambda: ([[5, 6, 7, 8]], 2), [0.0], "no EOS at the end: it was cut off"),
        Case("a batch", lambda: ([[2], [5, 2], [5, 6]], 2), [1.0, 1.0, 0.0]),
        Case("an empty answer", lambda: ([[]], 2), [0.0], "an empty answer has no last token: it did not end with EOS"),
    ],
}
