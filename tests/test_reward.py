import copy
import math
import random

import pytest
import torch

from rlhf_edu.batches import build_pair_batch
from rlhf_edu.devices import choose_device_setup
from rlhf_edu.generation import chat_prompt
from rlhf_edu.reward import (
    RewardConfig,
    RewardModel,
    evaluate_reward_model,
    fit_normalization,
    init_head,
    last_token_index,
    reward_accuracy,
    reward_loss,
    score_samples,
    score_texts,
)
from rlhf_edu.reward_training import load_reward_model, save_reward_model, train_reward_model
from rlhf_edu.training import total_steps


def synthetic_pairs(n: int, seed: int) -> list[dict]:
    """Chosen responses are full of 'a'; rejected ones have none (the tiny tokenizer is per character)."""
    rng = random.Random(seed)
    letters = "bcdefghijklmnopqrstuvwxyz"
    rows = []
    for i in range(n):
        words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 5))) for _ in range(4)]
        rejected = " ".join(words)
        chosen = "".join("a" if c != " " and rng.random() < 0.7 else c for c in rejected)
        rows.append({"prompt": f"Say something {i}.", "chosen": chosen, "rejected": rejected})
    return rows


def swapped(rows: list[dict]) -> list[dict]:
    """The same pairs with the preference reversed."""
    return [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows]


# --------------------------------------------------------------------------- the loss


@pytest.mark.parametrize(
    ("r_c", "r_r", "loss", "grad"),
    [(0.0, 0.0, 0.693147, 0.5), (1.0, 0.0, 0.313262, 0.268941)],
)
def test_reward_loss_reference_values_and_gradients(r_c, r_r, loss, grad):
    chosen = torch.tensor([r_c], requires_grad=True)
    rejected = torch.tensor([r_r], requires_grad=True)
    value = reward_loss(chosen, rejected)
    value.backward()
    assert value.item() == pytest.approx(loss, abs=1e-6)
    assert chosen.grad.item() == pytest.approx(-grad, abs=1e-6)
    assert rejected.grad.item() == pytest.approx(+grad, abs=1e-6)


def test_reward_loss_is_shift_invariant_and_matches_naive_loop():
    torch.manual_seed(0)
    chosen, rejected, margin = torch.randn(7), torch.randn(7), torch.rand(7)
    shifted = reward_loss(chosen + 3.5, rejected + 3.5)
    torch.testing.assert_close(shifted, reward_loss(chosen, rejected))
    for m, per_pair_margin in [(None, [0.0] * 7), (0.7, [0.7] * 7), (margin, margin.tolist())]:
        naive = 0.0
        for c, r, mi in zip(chosen.tolist(), rejected.tolist(), per_pair_margin):
            sigmoid = 1.0 / (1.0 + math.exp(-(c - r - mi)))
            naive += -math.log(sigmoid) / 7
        assert reward_loss(chosen, rejected, margin=m).item() == pytest.approx(naive, abs=1e-6)


def test_margin_asks_the_chosen_score_to_win_by_that_much():
    chosen, rejected = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0])
    assert reward_loss(chosen, rejected, margin=1.0).item() == pytest.approx(math.log(2), abs=1e-6)
    torch.testing.assert_close(reward_loss(chosen, rejected, margin=0.5), reward_loss(chosen - 0.5, rejected))


def test_accuracy_counts_ties_as_half():
    chosen, rejected = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.0, 2.0, 5.0, 4.0])
    assert reward_accuracy(chosen, rejected) == 0.5  # one win, two ties, one loss
    assert reward_accuracy(torch.zeros(5), torch.zeros(5)) == 0.5


# --------------------------------------------------------------------------- normalization


def test_fit_normalization_reference_value():
    gain, bias = fit_normalization([1.0, 2.0, 3.0])  # population std sqrt(2/3)
    assert gain == pytest.approx(1.224745, abs=1e-6)
    assert bias == pytest.approx(-2.449490, abs=1e-6)
    with pytest.raises(ValueError):
        fit_normalization([2.0, 2.0])


def test_set_normalization_gives_mean_zero_std_one(tiny):
    model, tok = tiny
    rm = RewardModel.from_causal_lm(model)
    rows = synthetic_pairs(12, seed=1)
    prompts, responses = [r["prompt"] for r in rows], [r["rejected"] for r in rows]
    raw = score_texts(rm, tok, prompts, responses, batch_size=5, raw=True)  # (12,)
    rm.set_normalization(raw)
    scores = score_texts(rm, tok, prompts, responses, batch_size=5)  # (12,)
    assert abs(scores.mean().item()) < 1e-5
    assert scores.std(correction=0).item() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(scores, rm.gain * raw + rm.bias)


def test_score_samples_reads_the_sampled_tokens_and_normalizes_them(tiny):
    """`score_samples` gives what one pass of the reward model over the sampled ids gives, in
    batches of any size; gain and bias fit on its raw scores make those ids score mean 0, std 1."""
    from rlhf_edu.generation import SamplingConfig, sample

    model, tok = tiny
    s = sample(
        model,
        tok,
        [f"question {i}" for i in range(5)],
        SamplingConfig(8, 1.0, 5),
        generator=torch.Generator().manual_seed(0),
    )
    rm = RewardModel.from_causal_lm(model)
    with torch.no_grad():
        whole = rm(s.input_ids, s.attention_mask)  # (B,)
    torch.testing.assert_close(score_samples(rm, s.input_ids, s.attention_mask, batch_size=2), whole, atol=1e-5, rtol=0)
    rm.set_normalization(score_samples(rm, s.input_ids, s.attention_mask, batch_size=2, raw=True))
    scores = score_samples(rm, s.input_ids, s.attention_mask)  # (B,)
    assert abs(scores.mean().item()) < 1e-5
    assert scores.std(correction=0).item() == pytest.approx(1.0, abs=1e-5)


# --------------------------------------------------------------------------- the model


def test_head_init():
    torch.manual_seed(0)
    H = 1024
    head = init_head(H)
    assert head.weight.shape == (1, H)
    assert head.weight.std().item() == pytest.approx(1 / math.sqrt(H + 1), rel=0.10)
    assert torch.equal(head.bias, torch.zeros(1))


def test_last_token_index_reads_the_mask():
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 1, 0]])
    assert last_token_index(mask).tolist() == [4, 5, 4]
    with pytest.raises(ValueError):
        last_token_index(torch.zeros(1, 3, dtype=torch.long))


def test_pair_batch_layout(tiny):
    _, tok = tiny
    batch = build_pair_batch(tok, ["hi", "a longer prompt"], ["ok.", "yes"], ["no", "fine, thanks."])
    assert batch["input_ids"].shape[0] == 4
    P = batch["context_length"]
    lengths = batch["response_mask"].sum(1).tolist()
    assert lengths == [len("ok.") + 1, len("yes") + 1, len("no") + 1, len("fine, thanks.") + 1]
    last = last_token_index(batch["attention_mask"])  # (4,)
    assert last.tolist() == [P + n - 1 for n in lengths]
    assert (batch["input_ids"][torch.arange(4), last] == tok.eos_token_id).all()  # the score is read at EOS


def test_score_is_head_of_last_real_token_under_left_and_right_padding(tiny):
    model, tok = tiny
    rm = RewardModel.from_causal_lm(model)
    prompt, response = "hi", "ok, fine."
    # By hand: one unpadded sequence, the head on the hidden state of its last token (the EOS).
    ids = tok(chat_prompt(tok, prompt) + response, add_special_tokens=False).input_ids + [tok.eos_token_id]
    ids = torch.tensor([ids])  # (1, T)
    with torch.no_grad():
        hidden = rm.backbone(input_ids=ids).last_hidden_state  # (1, T, H)
        by_hand = rm.head(hidden[:, -1]).squeeze(-1)  # (1,)
    alone = score_texts(rm, tok, [prompt], [response])  # (1,)
    left = score_texts(rm, tok, [prompt, "a much longer prompt"], [response, "x"])  # row 0 left-padded
    right = score_texts(rm, tok, [prompt, "hi"], [response, "a much longer response"])  # row 0 right-padded
    torch.testing.assert_close(alone, by_hand, atol=1e-5, rtol=0)
    torch.testing.assert_close(left[:1], by_hand, atol=1e-5, rtol=0)
    torch.testing.assert_close(right[:1], by_hand, atol=1e-5, rtol=0)


def test_readout_index_can_be_replaced(tiny):
    """The exercise's hook: reading the first padding position instead of the last real token
    (mask.sum(1)) changes a right-padded row's score and leaves an unpadded row's index out of range."""
    model, tok = tiny
    rm = RewardModel.from_causal_lm(model)
    prompts, responses = ["hi", "hi"], ["ok, fine.", "a much longer response"]
    right = score_texts(rm, tok, prompts, responses)
    rm.readout_index = lambda mask: mask.sum(1).clamp(max=mask.shape[1] - 1)
    moved = score_texts(rm, tok, prompts, responses)
    assert (moved[0] - right[0]).abs() > 1e-4  # row 0 is right-padded: it now reads a pad token
    rm.readout_index = last_token_index
    torch.testing.assert_close(score_texts(rm, tok, prompts, responses), right)


# --------------------------------------------------------------------------- training


def test_total_steps():
    assert total_steps(RewardConfig(batch_size=8), 20) == 3
    assert total_steps(RewardConfig(batch_size=8, epochs=2), 20) == 6
    assert total_steps(RewardConfig(max_steps=5), 20) == 5


def test_training_learns_the_preference_and_saves(tiny, tmp_path):
    model, tok = tiny
    rm = RewardModel.from_causal_lm(model)
    train_rows, heldout_rows = synthetic_pairs(64, seed=0), synthetic_pairs(16, seed=100)
    config = RewardConfig(lr=3e-3, batch_size=8, epochs=2, warmup_steps=2, eval_every=8)
    before = [p.detach().clone() for p in rm.parameters()]
    start = evaluate_reward_model(rm, tok, heldout_rows, config)
    if start["eval/accuracy"] > 0.5:  # a random init may already lean towards 'a': then teach the opposite
        train_rows, heldout_rows = swapped(train_rows), swapped(heldout_rows)
        start = evaluate_reward_model(rm, tok, heldout_rows, config)
    assert start["eval/accuracy"] <= 0.5  # so the accuracy below is learned, not luck
    history = train_reward_model(rm, tok, train_rows, heldout_rows, config, progress=False)
    assert len(history) == 16 and all(math.isfinite(h["train/loss"]) for h in history)
    assert {
        "train/accuracy",
        "train/margin",
        "train/lr",
        "eval/accuracy",
        "eval/margin",
    } <= history[-1].keys()
    assert history[-1]["eval/accuracy"] >= 0.9
    assert history[-1]["eval/loss"] < 0.5 * start["eval/loss"]
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    assert history[-1]["eval/margin"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, rm.parameters()))
    # Save, load, same scores.
    save_reward_model(rm, tok, tmp_path)
    loaded, loaded_tok = load_reward_model(tmp_path)
    prompts, responses = [r["prompt"] for r in heldout_rows], [r["chosen"] for r in heldout_rows]
    torch.testing.assert_close(
        score_texts(loaded, loaded_tok, prompts, responses),
        score_texts(rm, tok, prompts, responses),
    )


def grouped_pairs(n_prompts: int, seed: int) -> list[dict]:
    """Four answers a prompt and all six pairs among them, the answer with more 'a' preferred."""
    rng = random.Random(seed)
    rows = []
    for i in range(n_prompts):
        answers = ["".join(rng.choice("ab c") for _ in range(12)) for _ in range(4)]
        for x in range(4):
            for y in range(x + 1, 4):
                a, b = answers[x], answers[y]
                if a.count("a") != b.count("a"):
                    chosen, rejected = (a, b) if a.count("a") > b.count("a") else (b, a)
                    rows.append({"prompt": f"Say something {i}.", "chosen": chosen, "rejected": rejected})
    return rows


def test_prompt_batches_take_every_pair_of_a_prompt_once_a_pass():
    from rlhf_edu.training import prompt_batch_indices

    prompts = ["p0", "p1", "p0", "p2", "p1", "p0", "p3"]
    batches = prompt_batch_indices(prompts, 2, seed=0)
    first_pass = [next(batches) for _ in range(2)]  # 4 prompts, 2 a batch
    assert sorted(i for b in first_pass for i in b) == list(range(7))
    for batch in first_pass:
        assert len({prompts[i] for i in batch}) == 2  # whole prompts: all rows of each
        for i in batch:
            assert all(j in batch for j, p in enumerate(prompts) if p == prompts[i])
    assert total_steps(RewardConfig(batch_size=2, group_by_prompt=True), len(set(prompts))) == 2


def test_batch_answers_keeps_the_pair_layout_and_scores_repeats_once_only_when_asked():
    from rlhf_edu.reward_training import batch_answers

    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": "a", "rejected": "c", "rejected_eos": False},
        {"prompt": "q", "chosen": "b", "rejected": "a"},
    ]
    answers, chosen, rejected = batch_answers(rows)  # as build_pair_batch: chosen rows, then rejected rows
    assert answers == [
        ("p", "a", True),
        ("p", "a", True),
        ("q", "b", True),
        ("p", "b", True),
        ("p", "c", False),
        ("q", "a", True),
    ]
    assert (chosen, rejected) == ([0, 1, 2], [3, 4, 5])
    answers, chosen, rejected = batch_answers(rows, distinct=True)
    assert answers == [("p", "a", True), ("q", "b", True), ("p", "b", True), ("p", "c", False), ("q", "a", True)]
    assert [answers[i] for i in chosen] == [("p", "a", True), ("p", "a", True), ("q", "b", True)]
    assert [answers[i] for i in rejected] == [("p", "b", True), ("p", "c", False), ("q", "a", True)]


def test_grouped_step_scores_each_answer_once_and_matches_the_naive_pair_loss(tiny):
    """With group_by_prompt, a step's loss is the Bradley-Terry loss of every pair of its prompts,
    computed pair by pair; the forward pass holds each distinct answer once (4 a prompt, not 12)."""
    model, tok = tiny
    rm = RewardModel.from_causal_lm(model)
    rows = grouped_pairs(2, seed=0)
    config = RewardConfig(lr=0.0, batch_size=2, group_by_prompt=True, max_steps=1)
    naive = [
        reward_loss(*(score_texts(rm, tok, [r["prompt"]], [r[side]]) for side in ("chosen", "rejected"))) for r in rows
    ]
    seen = []
    real_forward = rm.forward
    rm.forward = lambda ids, mask: seen.append(ids.shape[0]) or real_forward(ids, mask)
    fp32 = choose_device_setup("cpu", dtype="fp32")
    history = train_reward_model(rm, tok, rows, [], config, setup=fp32, progress=False)
    assert seen == [8]  # 2 prompts x 4 distinct answers
    assert history[0]["train/loss"] == pytest.approx(float(torch.stack(naive).mean()), abs=1e-5)


def test_grouped_training_learns_the_preference(tiny):
    model, tok = tiny
    rm = RewardModel.from_causal_lm(model)
    train_rows, heldout_rows = grouped_pairs(24, seed=0), grouped_pairs(8, seed=100)
    config = RewardConfig(lr=3e-3, batch_size=4, group_by_prompt=True, epochs=3, warmup_steps=2)
    start = evaluate_reward_model(rm, tok, heldout_rows, config)
    if start["eval/accuracy"] > 0.5:  # a random init may already lean towards 'a': then teach the opposite
        train_rows, heldout_rows = swapped(train_rows), swapped(heldout_rows)
        start = evaluate_reward_model(rm, tok, heldout_rows, config)
    history = train_reward_model(rm, tok, train_rows, [], config, progress=False)
    assert len(history) == 18  # 3 passes over 24 prompts, 4 a step
    assert evaluate_reward_model(rm, tok, heldout_rows, config)["eval/accuracy"] >= 0.8 > start["eval/accuracy"]


def test_micro_batches_give_the_whole_batch_update_and_keep_a_prompts_pairs_together(tiny):
    """micro_batch_size splits a step's forward and backward passes; the parts' gradients add up to
    the whole batch's, so one step moves the weights as the unsplit step does (fp32, up to rounding)."""
    from rlhf_edu.reward_training import micro_batches

    rows = grouped_pairs(3, seed=1)
    assert micro_batches(rows, None) == [rows]
    assert [len(p) for p in micro_batches(rows[:7], 3)] == [3, 3, 1]
    parts = micro_batches(rows, 2, by_prompt=True)
    assert [len({r["prompt"] for r in part}) for part in parts] == [2, 1]
    assert [r for part in parts for r in part] == rows
    with pytest.raises(ValueError, match="micro_batch_size"):
        RewardConfig(micro_batch_size=0)
    model, tok = tiny
    fp32 = choose_device_setup("cpu", dtype="fp32")
    after = {}
    for micro in (None, 2):
        torch.manual_seed(0)
        rm = RewardModel.from_causal_lm(copy.deepcopy(model))
        config = RewardConfig(lr=1e-3, batch_size=6, max_steps=1, micro_batch_size=micro)
        history = train_reward_model(rm, tok, rows[:6], [], config, setup=fp32, progress=False)
        # The head's bias is left out: the loss only sees differences, so its gradient is 0 up to
        # rounding, and Adam turns any rounding into a full step of either sign.
        after[micro] = (history[0], [p.detach().clone() for n, p in rm.named_parameters() if n != "head.bias"])
    (whole, weights_whole), (split, weights_split) = after[None], after[2]
    for key in ("train/loss", "train/grad_norm", "train/margin"):
        assert split[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-6), key
    for a, b in zip(weights_whole, weights_split):  # Adam's first step is about lr = 1e-3 per weight
        torch.testing.assert_close(a, b, rtol=0, atol=2e-5)  # where a gradient is ~0, rounding is amplified


def test_lr_zero_leaves_parameters_unchanged(tiny):
    model, tok = tiny
    rm = RewardModel.from_causal_lm(model)
    before = {k: v.detach().clone() for k, v in rm.state_dict().items()}
    config = RewardConfig(lr=0.0, batch_size=4, max_steps=2, eval_every=2)
    train_reward_model(rm, tok, synthetic_pairs(8, 0), synthetic_pairs(4, 1), config, progress=False)
    assert all(torch.equal(before[k], v) for k, v in rm.state_dict().items())


def test_nan_loss_raises_and_names_the_quantity(tiny, monkeypatch):
    model, tok = tiny
    rm = RewardModel.from_causal_lm(model)
    monkeypatch.setattr(rm.head, "forward", lambda h: torch.full(h.shape[:-1] + (1,), float("nan")))
    with pytest.raises(FloatingPointError, match="loss.*step 0"):
        train_reward_model(rm, tok, synthetic_pairs(4, 0), [], RewardConfig(batch_size=4), progress=False)


def test_cut_off_responses_are_scored_without_eos(tiny):
    """A response that hit the token budget is scored as sampled: no EOS appended."""
    from rlhf_edu.batches import build_pair_batch
    from rlhf_edu.reward import RewardModel, last_token_index

    model, tok = tiny
    batch = build_pair_batch(tok, ["hi"], ["ok."], ["ok."], chosen_eos=[True], rejected_eos=[False])
    last = last_token_index(batch["attention_mask"])
    assert batch["input_ids"][0, last[0]] == tok.eos_token_id
    assert batch["input_ids"][1, last[1]] != tok.eos_token_id
    rm = RewardModel.from_causal_lm(model)
    with torch.no_grad():
        scores = rm(batch["input_ids"], batch["attention_mask"])
    assert scores[0] != scores[1]


def test_freeze_lower_layers_trains_only_the_top(tiny):
    from rlhf_edu.reward import RewardModel
    from rlhf_edu.training import freeze_lower_layers, transformer_blocks

    model, _ = tiny
    rm = RewardModel.from_causal_lm(model)
    blocks = transformer_blocks(rm.backbone)
    freeze_lower_layers(rm, 1)
    assert all(p.requires_grad for p in blocks[-1].parameters())
    assert not any(p.requires_grad for p in blocks[0].parameters())
    assert not rm.backbone.get_input_embeddings().weight.requires_grad
    assert all(p.requires_grad for p in rm.head.parameters())
    freeze_lower_layers(rm, None)
    assert all(p.requires_grad for p in rm.parameters())
