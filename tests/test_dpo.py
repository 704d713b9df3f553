"""DPO / cDPO / IPO of rlhf_edu.dpo: the values of docs/implementation_details.md#dpo-tests
(initialization, loss identities, masking, precomputed reference log-probs), naive loops, and
tiny-model runs."""

import copy
import math
import random
import warnings

import pytest
import torch

from rlhf_edu.devices import choose_device_setup, device_setup
from rlhf_edu.dpo import (
    DPOConfig,
    dpo_loss,
    pair_batch,
    pair_logps,
    precompute_reference_logps,
    sequence_logps,
    train_dpo,
)
from rlhf_edu.models import tiny_model_and_tokenizer

CPU = device_setup("cpu")  # this CPU's dtype rule, or RLHF_EDU_DTYPE
LOG2 = math.log(2.0)
F64 = torch.float64


@pytest.fixture(autouse=True)
def _threads():
    """One thread: the tiny models' ops are too small to split, and on cores shared with other
    work a second thread's waiting makes these tests many times slower (overrides conftest)."""
    torch.set_num_threads(1)


def init_logps(n=1, seed=0):
    """Policy == reference: the same sequence log-probs on both sides, with gradients on the policy."""
    g = torch.Generator().manual_seed(seed)
    ref_c = -20 * torch.rand(n, generator=g, dtype=F64)  # (B,)
    ref_r = -20 * torch.rand(n, generator=g, dtype=F64)  # (B,)
    return ref_c.clone().requires_grad_(), ref_r.clone().requires_grad_(), ref_c, ref_r


def naive_dpo_losses(pc, pr, rc, rr, beta, loss_type="sigmoid", eps=0.0):
    """One pair at a time in plain Python: the mean loss and the two implicit rewards per pair."""
    total, chosen, rejected = 0.0, [], []
    for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist()):
        z = (a - c) - (b - d)
        if loss_type == "ipo":
            loss = (z - 1 / (2 * beta)) ** 2
        else:
            p_chosen = 1 / (1 + math.exp(-beta * z))  # Bradley-Terry probability that the label is right
            loss = -(1 - eps) * math.log(p_chosen) - eps * math.log(1 - p_chosen)
        total += loss
        chosen.append(beta * (a - c))
        rejected.append(beta * (b - d))
    return total / len(chosen), chosen, rejected


# --------------------------------------------------------------------------- initialization


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_at_initialization_is_log2_with_gradients_half_beta(beta):
    pc, pr, rc, rr = init_logps()
    loss, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, rc, rr, beta)
    loss.backward()
    assert loss.item() == pytest.approx(LOG2, abs=1e-12)
    assert chosen_rewards.tolist() == [0.0] and rejected_rewards.tolist() == [0.0]
    assert pc.grad.item() == pytest.approx(-beta / 2, abs=1e-12)  # -0.05 at beta 0.1
    assert pr.grad.item() == pytest.approx(+beta / 2, abs=1e-12)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_cdpo_at_initialization_is_still_log2(eps):
    pc, pr, rc, rr = init_logps()
    loss, _, _ = dpo_loss(pc, pr, rc, rr, 0.1, label_smoothing=eps)
    loss.backward()
    assert loss.item() == pytest.approx(LOG2, abs=1e-12)
    # d/dz [(1 - eps) softplus(-beta z) + eps softplus(beta z)] at z = 0: the pull shrinks by 1 - 2 eps
    assert pc.grad.item() == pytest.approx(-0.05 * (1 - 2 * eps), abs=1e-12)


def test_ipo_at_initialization_is_25_at_beta_0_1():
    pc, pr, rc, rr = init_logps()
    loss, _, _ = dpo_loss(pc, pr, rc, rr, 0.1, loss_type="ipo")
    loss.backward()
    assert loss.item() == pytest.approx(25.0, abs=1e-10)  # (1 / (2 beta))^2
    assert pc.grad.item() == pytest.approx(-10.0, abs=1e-10)  # 2 (z - 5) at z = 0
    assert pr.grad.item() == pytest.approx(+10.0, abs=1e-10)


def test_gradients_are_averaged_over_pairs():
    pc, pr, rc, rr = init_logps(n=4)
    loss, _, _ = dpo_loss(pc, pr, rc, rr, 0.1)
    loss.backward()
    torch.testing.assert_close(pc.grad, torch.full((4,), -0.05 / 4, dtype=F64))
    torch.testing.assert_close(pr.grad, torch.full((4,), +0.05 / 4, dtype=F64))


# --------------------------------------------------------------------------- identities


def test_loss_identities():
    g = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (torch.randn(9, generator=g, dtype=F64) for _ in range(4))
    beta, eps = 0.3, 0.2
    z = (pc - rc) - (pr - rr)
    softplus = torch.nn.functional.softplus
    loss, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, rc, rr, beta)
    torch.testing.assert_close(loss, softplus(-beta * z).mean())  # L(z) = softplus(-beta z)
    torch.testing.assert_close(chosen_rewards - rejected_rewards, beta * z)  # the margin is beta z
    swapped, _, _ = dpo_loss(pr, pc, rr, rc, beta)  # chosen <-> rejected maps z -> -z
    torch.testing.assert_close(swapped, softplus(beta * z).mean())
    smoothed, _, _ = dpo_loss(pc, pr, rc, rr, beta, label_smoothing=eps)
    torch.testing.assert_close(smoothed, ((1 - eps) * softplus(-beta * z) + eps * softplus(beta * z)).mean())


def test_ipo_is_minimal_at_the_target_gap():
    beta = 0.25
    rc, rr = torch.zeros(1, dtype=F64), torch.zeros(1, dtype=F64)
    target = torch.tensor([1 / (2 * beta)], dtype=F64, requires_grad=True)  # z = 2
    loss, _, _ = dpo_loss(target, torch.zeros(1, dtype=F64), rc, rr, beta, loss_type="ipo")
    loss.backward()
    assert loss.item() == 0.0 and target.grad.item() == 0.0
    beyond, _, _ = dpo_loss(target.detach() + 1, torch.zeros(1, dtype=F64), rc, rr, beta, loss_type="ipo")
    assert beyond.item() == pytest.approx(1.0)  # unlike DPO, IPO penalizes overshooting the gap


@pytest.mark.parametrize("loss_type, eps", [("sigmoid", 0.0), ("sigmoid", 0.25), ("ipo", 0.0)])
def test_dpo_loss_matches_a_naive_loop(loss_type, eps):
    g = torch.Generator().manual_seed(2)
    pc, pr, rc, rr = (-30 * torch.rand(7, generator=g, dtype=F64) for _ in range(4))
    loss, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, rc, rr, 0.2, loss_type, eps)
    naive_loss, naive_chosen, naive_rejected = naive_dpo_losses(pc, pr, rc, rr, 0.2, loss_type, eps)
    assert loss.item() == pytest.approx(naive_loss, rel=1e-10)
    assert chosen_rewards.tolist() == pytest.approx(naive_chosen, rel=1e-10)
    assert rejected_rewards.tolist() == pytest.approx(naive_rejected, rel=1e-10)


def test_rewards_are_detached_and_large_gaps_stay_finite():
    pc = torch.tensor([0.0, -500.0], requires_grad=True)
    pr = torch.tensor([-500.0, 0.0], requires_grad=True)
    ref = torch.zeros(2)
    loss, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, ref, ref, 1.0)
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad
    assert loss.item() == pytest.approx(250.0)  # pair 1 costs 0, pair 2 costs 500: log sigmoid is stable
    loss.backward()
    assert torch.isfinite(pc.grad).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"loss_type": "hinge"}, "loss_type"),
        ({"loss_type": "ipo", "label_smoothing": 0.1}, "IPO"),
        ({"label_smoothing": 0.5}, "label_smoothing"),
        ({"beta": 0.0}, "beta"),
    ],
)
def test_bad_loss_arguments_are_named(kwargs, message):
    x = torch.zeros(2)
    args = {"beta": 0.1, **kwargs}
    with pytest.raises(ValueError, match=message):
        dpo_loss(x, x, x, x, **args)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"loss_type": "hinge"}, "loss_type"),
        ({"loss_type": "ipo", "label_smoothing": 0.1}, "label_smoothing"),
        ({"beta": -1.0}, "beta"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_steps": 0}, "max_steps"),
        ({"lr": -1.0}, "lr"),
    ],
)
def test_bad_config_is_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        DPOConfig(**overrides)


# --------------------------------------------------------------------------- masking


def test_sequence_logps_sum_response_tokens_only():
    per_token = torch.tensor([[-1.0, -2.0, -3.0, 99.0], [-0.5, 77.0, -5.0, -6.0]])  # (B, R) garbage at 99, 77
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])  # (B, R)
    assert sequence_logps(per_token, mask).tolist() == [-6.0, -0.5]


def synthetic_pairs(n: int, seed: int) -> list[dict]:
    """Chosen responses are full of 'a'; rejected ones have none (the tiny tokenizer is per character)."""
    rng = random.Random(seed)
    letters = "bcdefghijklmnopqrstuvwxyz"
    rows = []
    for i in range(n):
        rejected = " ".join("".join(rng.choice(letters) for _ in range(rng.randint(2, 4))) for _ in range(3))
        chosen = "".join("a" if c != " " and rng.random() < 0.7 else c for c in rejected)
        rows.append({"prompt": f"Say something {i}.", "chosen": chosen, "rejected": rejected})
    rows[0]["rejected_eos"] = False  # a rejected response that was cut off at the token budget
    return rows


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_precomputed_reference_logps_equal_one_pair_at_a_time(arch):
    """Batched (with padding) and alone give the same numbers; pad contents do not matter."""
    model, tok = tiny_model_and_tokenizer(arch)
    rows = synthetic_pairs(5, seed=1)
    rows[3]["prompt"] = "A much longer prompt than the others, to force left padding."
    ref = precompute_reference_logps(model, tok, rows, DPOConfig(batch_size=3), setup=CPU)
    # The checks below run in fp32; under bf16 autocast the precomputed side differs by bf16's
    # rounding (DeviceSetup.logp_tolerance), in fp32 by nothing visible.
    tol = 1e-4 if CPU.autocast_dtype is None else CPU.logp_tolerance
    with torch.no_grad():
        for i, row in enumerate(rows):
            chosen, rejected = pair_logps(model, pair_batch(tok, [row], 96))
            assert chosen.item() == pytest.approx(ref["chosen"][i].item(), abs=tol)
            assert rejected.item() == pytest.approx(ref["rejected"][i].item(), abs=tol)
        batch = pair_batch(tok, rows, 96)
        garbage = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 7)  # pad -> some real token
        chosen, _ = pair_logps(model, {**batch, "input_ids": garbage})
    torch.testing.assert_close(chosen, ref["chosen"], atol=tol, rtol=0)
    assert ref["chosen"][0] != ref["rejected"][0]
    assert (ref["rejected"] < 0).all()


def test_cut_off_response_has_no_eos_in_its_logp():
    """rejected_eos=False: the same text scores higher (one log-prob fewer) than with an EOS."""
    model, tok = tiny_model_and_tokenizer()
    row = synthetic_pairs(1, seed=0)[0]
    cut = precompute_reference_logps(model, tok, [row], DPOConfig(), setup=CPU)["rejected"]
    ended = precompute_reference_logps(model, tok, [{**row, "rejected_eos": True}], DPOConfig(), setup=CPU)["rejected"]
    assert cut.item() > ended.item()


# --------------------------------------------------------------------------- training on a tiny model


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_lr_zero_changes_nothing_and_the_loss_stays_log2():
    reference, tok = tiny_model_and_tokenizer()
    policy = copy.deepcopy(reference)
    rows = synthetic_pairs(12, seed=0)
    config = DPOConfig(lr=0.0, batch_size=4, epochs=2)
    ref = precompute_reference_logps(reference, tok, rows, config, setup=CPU)
    before = params(policy)
    history = train_dpo(policy, ref, tok, rows, config, progress=False, setup=CPU)
    # The reference log-probs were computed in other batches than the policy's: in fp32 the same
    # tokens agree to 1e-5; under bf16 autocast (8-bit products) a sequence's log-prob moves with
    # the batch's shape by up to logp_tolerance nats, so a margin by up to beta times that.
    tol = 1e-5 if CPU.autocast_dtype is None else config.beta * CPU.logp_tolerance
    assert len(history) == 6
    for h in history:
        assert h["train/loss"] == pytest.approx(LOG2, abs=tol)
        assert abs(h["rewards/margins"]) < tol
        assert h["rewards/accuracies"] <= 0.75  # no signal: around the tie value 0.5
    assert all(torch.equal(before[k], v) for k, v in params(policy).items())


def test_first_step_at_the_reference_does_not_warn():
    """At step 0 the policy is the reference: log-ratios 0, loss log 2, and no health warning."""
    reference, tok = tiny_model_and_tokenizer()
    rows = synthetic_pairs(4, seed=0)
    config = DPOConfig(batch_size=4, max_steps=1)
    ref = precompute_reference_logps(reference, tok, rows, config, setup=CPU)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = train_dpo(copy.deepcopy(reference), ref, tok, rows, config, progress=False, setup=CPU)
    assert not [w for w in caught if "DPO step 0" in str(w.message)]
    assert history[0]["train/loss"] == pytest.approx(LOG2, abs=1e-5)


def test_first_step_away_from_the_reference_warns_and_logs_mean_rewards():
    """Reference log-probs of the rejected responses 1 nat lower than the policy's (as if they came
    from another model): step 0 warns, and each logged implicit reward is the batch MEAN of
    beta * (log pi - log pi_ref): 0.1 for the rejected side at beta 0.1, not the sum 0.4."""
    reference, tok = tiny_model_and_tokenizer()
    rows = synthetic_pairs(4, seed=0)
    config = DPOConfig(batch_size=4, max_steps=1, lr=0.0, beta=0.1, init_tolerance=1e-3)
    fp32 = choose_device_setup("cpu", dtype="fp32")  # the logged values to 1e-5 need fp32 in any run
    ref = precompute_reference_logps(reference, tok, rows, config, setup=fp32)
    ref = {"chosen": ref["chosen"], "rejected": ref["rejected"] - 1.0}
    with pytest.warns(UserWarning, match="DPO step 0"):
        history = train_dpo(copy.deepcopy(reference), ref, tok, rows, config, progress=False, setup=fp32)
    record = history[0]
    assert record["rewards/rejected"] == pytest.approx(0.1, abs=1e-5)
    assert record["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
    assert record["rewards/margins"] == pytest.approx(-0.1, abs=1e-5)
    assert record["train/loss"] == pytest.approx(math.log1p(math.exp(0.1)), abs=1e-5)  # -log sigmoid(-0.1)


def test_reference_logps_must_match_the_rows():
    reference, tok = tiny_model_and_tokenizer()
    rows = synthetic_pairs(4, seed=0)
    ref = precompute_reference_logps(reference, tok, rows[:3], DPOConfig(), setup=CPU)
    with pytest.raises(ValueError, match="precompute them on these rows"):
        train_dpo(copy.deepcopy(reference), ref, tok, rows, DPOConfig(), progress=False, setup=CPU)


def test_nan_reference_stops_with_the_quantity_named():
    reference, tok = tiny_model_and_tokenizer()
    rows = synthetic_pairs(4, seed=0)
    ref = {"chosen": torch.full((4,), float("nan")), "rejected": torch.zeros(4)}
    with pytest.raises(FloatingPointError, match="the DPO loss"):
        train_dpo(copy.deepcopy(reference), ref, tok, rows, DPOConfig(batch_size=4), progress=False, setup=CPU)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_learns_a_simple_preference(loss_type):
    """Chosen responses are full of 'a': the implicit reward learns to prefer them. The first record
    is measured before any update, so it is the initialization value."""
    reference, tok = tiny_model_and_tokenizer()
    policy = copy.deepcopy(reference)
    rows = synthetic_pairs(24, seed=0)
    config = DPOConfig(loss_type=loss_type, lr=3e-3, batch_size=8, epochs=6, beta=0.1)
    ref = precompute_reference_logps(reference, tok, rows, config, setup=CPU)
    seen = []
    history = train_dpo(
        policy, ref, tok, rows, config, progress=False, setup=CPU, on_step=lambda step, record: seen.append(step)
    )
    assert seen == list(range(1, 19))
    assert history[0]["train/loss"] == pytest.approx(LOG2 if loss_type == "sigmoid" else 25.0, abs=1e-4)
    assert history[0]["rewards/accuracies"] == 0.5  # every margin is 0 at initialization: all ties
    last = history[-3:]
    assert min(h["rewards/accuracies"] for h in last) == 1.0
    margins = [h["rewards/margins"] for h in last]
    if loss_type == "sigmoid":  # DPO keeps pushing the margin up
        assert min(margins) > 1.0, margins
    else:  # IPO regresses z onto 1 / (2 beta) = 5, so the margin beta * z settles near 0.5
        assert all(0.35 < m < 0.65 for m in margins), margins
    assert sum(h["train/loss"] for h in last) / 3 < 0.5 * history[0]["train/loss"]

    # the implicit reward generalizes to pairs it never saw
    heldout = synthetic_pairs(8, seed=5)
    ref_heldout = precompute_reference_logps(reference, tok, heldout, config, setup=CPU)
    new_heldout = precompute_reference_logps(policy, tok, heldout, config, setup=CPU)
    margins = (new_heldout["chosen"] - ref_heldout["chosen"]) - (new_heldout["rejected"] - ref_heldout["rejected"])
    assert (margins > 0).float().mean() >= 0.875
