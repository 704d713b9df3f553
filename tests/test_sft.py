import pytest
import torch
import torch.nn.functional as F

from rlhf_edu.batches import build_sft_batch
from rlhf_edu.logprobs import per_token_logps
from rlhf_edu.models import load_model
from rlhf_edu.sft import SFTConfig, completion_mask, sft_batch_loss, sft_loss, train_sft
from rlhf_edu.training import linear_schedule

ROWS = [
    {"prompt": f"Explain thing {i} to a 10-year-old.", "response": f"Thing {i} is nice. It is fun."} for i in range(12)
]


def test_batch_layout_and_eos_in_the_loss(tiny):
    _, tok = tiny
    batch = build_sft_batch(tok, ["hi", "a longer prompt"], ["ok.", "fine, thanks."])
    P = batch["context_length"]
    response = batch["input_ids"][:, P:]
    mask = batch["response_mask"]
    assert mask.sum(1).tolist() == [len("ok.") + 1, len("fine, thanks.") + 1]  # + EOS
    for b in range(2):
        last = int(mask[b].sum()) - 1
        assert response[b, last] == tok.eos_token_id  # EOS is in the loss
        assert (response[b, last + 1 :] == tok.pad_token_id).all()
    assert tok.pad_token_id != tok.eos_token_id
    assert batch["attention_mask"][0, 0] == 0  # prompts are left-padded


def test_loss_only_on_response_tokens_matches_naive(tiny):
    model, tok = tiny
    batch = build_sft_batch(tok, ["hi", "a longer prompt"], ["ok.", "fine, thanks."])
    P = batch["context_length"]
    logps = per_token_logps(model, batch["input_ids"], batch["attention_mask"], P)
    loss = sft_loss(logps, batch["response_mask"])
    # Naive: each row alone, no padding, cross-entropy on response tokens only.
    nll, n = 0.0, 0
    for b in range(2):
        keep = batch["attention_mask"][b].bool()
        ids = batch["input_ids"][b, keep][None]
        n_prompt = int(batch["attention_mask"][b, :P].sum())
        logits = model(ids).logits[0]
        targets = ids[0, n_prompt:]
        nll += F.cross_entropy(logits[n_prompt - 1 : -1], targets, reduction="sum")
        n += len(targets)
    torch.testing.assert_close(loss, nll / n, atol=1e-5, rtol=1e-5)


def test_tokens_outside_the_response_mask_do_not_count(tiny):
    model, tok = tiny
    batch = build_sft_batch(tok, ["hi", "a longer prompt"], ["ok.", "fine, thanks."])
    P = batch["context_length"]
    loss = sft_loss(per_token_logps(model, batch["input_ids"], batch["attention_mask"], P), batch["response_mask"])
    # Overwrite the right padding of the short response: masked out, so the loss is unchanged.
    ids = batch["input_ids"].clone()
    n = int(batch["response_mask"][0].sum())
    ids[0, P + n :] = 9
    changed = sft_loss(per_token_logps(model, ids, batch["attention_mask"], P), batch["response_mask"])
    torch.testing.assert_close(loss, changed)


def test_loss_mask_hook(tiny):
    """completion_mask reproduces the default loss; a mask over prompt and answer is the naive
    cross-entropy of every real token after the first; one without the EOS leaves it out."""
    model, tok = tiny
    batch = build_sft_batch(tok, ["hi", "a longer prompt"], ["ok.", "fine, thanks."])
    torch.testing.assert_close(sft_batch_loss(model, batch, completion_mask), sft_batch_loss(model, batch))
    everything = sft_batch_loss(model, batch, lambda b: b["attention_mask"])
    nll, n = 0.0, 0
    for b in range(2):
        ids = batch["input_ids"][b, batch["attention_mask"][b].bool()][None]
        nll += F.cross_entropy(model(ids).logits[0, :-1], ids[0, 1:], reduction="sum")
        n += ids.shape[1] - 1
    torch.testing.assert_close(everything, nll / n, atol=1e-5, rtol=1e-5)

    def without_eos(b):
        mask = completion_mask(b).clone()
        last = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # (B,) each row's EOS
        mask[torch.arange(mask.shape[0]), last] = 0
        return mask

    P = batch["context_length"]
    logps = per_token_logps(model, batch["input_ids"], batch["attention_mask"], P)
    no_eos = without_eos(batch)[:, P:]
    torch.testing.assert_close(sft_batch_loss(model, batch, without_eos), sft_loss(logps, no_eos), atol=1e-5, rtol=1e-5)


def test_schedule():
    assert [round(linear_schedule(s, 2, 6), 3) for s in range(7)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]


def test_smoke_training_changes_parameters_and_saves(tiny, tmp_path):
    model, tok = tiny
    before = [p.detach().clone() for p in model.parameters()]
    cfg = SFTConfig(max_steps=3, batch_size=4, eval_every=3, n_heldout=4, lr=1e-3, warmup_steps=1)
    history = train_sft(model, tok, ROWS, cfg, out_dir=tmp_path, progress=False)
    assert len(history) == 3 and "eval/loss" in history[-1]
    assert all(torch.isfinite(torch.tensor(h["train/loss"])) for h in history)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "run_info.json").exists()
    reloaded, _ = load_model(str(tmp_path))
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)


def test_training_lowers_the_loss(tiny):
    model, tok = tiny
    cfg = SFTConfig(max_steps=30, batch_size=8, eval_every=30, n_heldout=2, lr=3e-3, warmup_steps=2)
    history = train_sft(model, tok, ROWS, cfg, progress=False)
    assert history[-1]["train/loss"] < 0.7 * history[0]["train/loss"]


def test_lr_zero_leaves_parameters_unchanged(tiny):
    model, tok = tiny
    before = [p.detach().clone() for p in model.parameters()]
    train_sft(model, tok, ROWS, SFTConfig(max_steps=2, batch_size=4, n_heldout=2, lr=0.0), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_same_seed_same_result():
    from rlhf_edu.models import tiny_model_and_tokenizer

    runs = []
    for _ in range(2):
        model, tok = tiny_model_and_tokenizer("llama", seed=0)
        runs.append(
            train_sft(model, tok, ROWS, SFTConfig(max_steps=3, batch_size=4, n_heldout=2, lr=1e-3), progress=False)
        )
    assert [h["train/loss"] for h in runs[0]] == [h["train/loss"] for h in runs[1]]


def test_cut_off_responses_get_no_eos(tiny):
    _, tok = tiny
    batch = build_sft_batch(tok, ["hi", "hi"], ["ok.", "ok."], eos=[True, False])
    P = batch["context_length"]
    assert batch["response_mask"].sum(1).tolist() == [4, 3]
    assert batch["input_ids"][0, P + 3] == tok.eos_token_id
    assert tok.eos_token_id not in batch["input_ids"][1, P:].tolist()


@pytest.mark.parametrize("loss_mask", [None, "everything"])
def test_micro_batches_give_the_whole_batch_update(loss_mask):
    """micro_batch_size splits a step's forward and backward passes; each part weighted by its share
    of the batch's loss tokens, the parts' gradients add up to the whole batch's (fp32)."""
    from rlhf_edu.devices import choose_device_setup
    from rlhf_edu.models import tiny_model_and_tokenizer

    mask = None if loss_mask is None else (lambda b: b["attention_mask"])
    rows = [{**r, "response": r["response"] + " More." * i} for i, r in enumerate(ROWS)]  # unequal lengths
    fp32 = choose_device_setup("cpu", dtype="fp32")
    runs = []
    for micro in (None, 3, 1):
        model, tok = tiny_model_and_tokenizer("llama", seed=0)
        cfg = SFTConfig(max_steps=1, batch_size=6, n_heldout=2, lr=1e-3, warmup_steps=0, micro_batch_size=micro)
        history = train_sft(model, tok, rows, cfg, loss_mask=mask, setup=fp32, progress=False)
        runs.append((history[0], [p.detach().clone() for p in model.parameters()]))
    (whole, weights_whole), *splits = runs
    for split, weights_split in splits:
        for key in ("train/loss", "train/grad_norm"):
            assert split[key] == pytest.approx(whole[key], rel=1e-5), key
        for a, b in zip(weights_whole, weights_split):  # Adam's first step is about lr = 1e-3 per weight
            torch.testing.assert_close(a, b, rtol=0, atol=2e-5)  # where a gradient is ~0, rounding is amplified
    with pytest.raises(ValueError, match="micro_batch_size"):
        SFTConfig(micro_batch_size=0)


def test_batch_parts_keep_the_layout(tiny):
    from rlhf_edu.sft import batch_parts, loss_tokens

    _, tok = tiny
    batch = build_sft_batch(tok, ["hi", "a longer prompt", "x"], ["ok.", "fine, thanks.", "yes"])
    assert batch_parts(batch, None) == [batch] and batch_parts(batch, 3) == [batch]
    parts = batch_parts(batch, 2)
    assert [p["input_ids"].shape[0] for p in parts] == [2, 1]
    assert all(p["context_length"] == batch["context_length"] for p in parts)
    assert sum(loss_tokens(p) for p in parts) == loss_tokens(batch) == int(batch["response_mask"].sum())
