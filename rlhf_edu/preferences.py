"""Preference pairs: sample two responses per prompt, label them, export them.

The data-collection step of Christiano et al. (2017) and Ouyang et al. (2022, section 3.4): the
policy answers each prompt twice, a labeler says which answer is better. Here the labeler is the
simulated annotator (annotator.py) for the bulk, and the learner for a few dozen pairs in notebook 02.

A pair on disk (data/preferences_train.jsonl, data/preferences_heldout.jsonl):

    {"pair_id": "train-0007-1", "concept": "gravity", "prompt": "Explain gravity to a 10-year-old.",
     "responses": ["...", "..."], "eos": [true, false], "tokens": [41, 64], "gold": [0.97, 0.71],
     "label": "0"}                       # "0" or "1": the preferred response; "tie"

`to_preference_rows` turns labeled pairs into the course schema {prompt, chosen, rejected}. Ties are
dropped there (the Bradley-Terry loss has no term for them); they stay in the files.
"""

from __future__ import annotations

import dataclasses

import torch

from rlhf_edu.data import DataError, data_dir, read_jsonl

PAIR_SCHEMA = {
    "pair_id": str,
    "concept": str,
    "prompt": str,
    "responses": list,
    "eos": list,
    "tokens": list,
    "gold": list,
    "label": str,
}
PAIR_OPTIONAL = {"temperatures": list}  # each side's sampling temperature, where the pairs mix them
LABELS = ("0", "1", "tie")


def sample_pairs(
    model,
    tokenizer,
    prompts: list[str],
    sampling,
    *,
    seed: int,
    autocast_ctx=None,
    id_prefix: str = "pair",
    temperatures: tuple[float, ...] | None = None,
) -> list[dict]:
    """Pairs of responses per prompt, scored by the rubric (not yet labeled).

    Without `temperatures`: two independent samples per prompt at `sampling.temperature` (both in
    the same batch, so `sampling.batch_size` should be even).

    With `temperatures` (k >= 2 values): one sample per prompt at each temperature and all k(k-1)/2
    pairs among them, each response's temperature kept in the pair's "temperatures" field and the
    two sides put in a seeded random order (so "first" never means "cooler"). Comparing outputs of
    different sampling settings of one policy widens the spread of quality the labels see, as
    InstructGPT (Ouyang et al. 2022) compared outputs of several models per prompt.
    """
    import itertools
    import random

    from rlhf_edu.generation import sample
    from rlhf_edu.rubric import score

    generator = torch.Generator().manual_seed(seed)
    if temperatures is None:
        doubled = [p for p in prompts for _ in range(2)]
        samples = sample(model, tokenizer, doubled, sampling, generator=generator, autocast_ctx=autocast_ctx)
        sides = [
            [(samples, 2 * i, sampling.temperature), (samples, 2 * i + 1, sampling.temperature)]
            for i in range(len(prompts))
        ]
    else:
        if len(temperatures) < 2:
            raise ValueError(f"temperatures needs at least 2 values, got {temperatures!r}")
        by_t = [
            sample(
                model,
                tokenizer,
                prompts,
                dataclasses.replace(sampling, temperature=t),
                generator=generator,
                autocast_ctx=autocast_ctx,
            )
            for t in temperatures
        ]
        order = random.Random(seed)
        sides = []
        for i in range(len(prompts)):
            for a, b in itertools.combinations(range(len(temperatures)), 2):
                pair = [(by_t[a], i, temperatures[a]), (by_t[b], i, temperatures[b])]
                order.shuffle(pair)
                sides.append(pair)
    per_prompt = len(sides) // max(len(prompts), 1)
    pairs = []
    for k, pair in enumerate(sides):
        prompt = prompts[k // per_prompt]
        texts = [s.texts[j] for s, j, _ in pair]
        eos = [bool(s.has_eos[j]) for s, j, _ in pair]
        row = {
            "pair_id": f"{id_prefix}-{k}",
            "prompt": prompt,
            "responses": texts,
            "eos": eos,
            "tokens": [int(s.n_tokens[j]) for s, j, _ in pair],
            "gold": [round(score(prompt, t, e)[0], 6) for t, e in zip(texts, eos)],
        }
        if temperatures is not None:
            row["temperatures"] = [t for _, _, t in pair]
        pairs.append(row)
    return pairs


def label_pair(pair: dict, annotator) -> str:
    """The annotator's label for a pair in its own order: "0", "1" or "tie"."""
    choice = annotator.label(pair["prompt"], pair["responses"][0], pair["responses"][1], pair["eos"][0], pair["eos"][1])
    return {"A": "0", "B": "1", "tie": "tie"}[choice]


def to_preference_rows(pairs: list[dict]) -> list[dict]:
    """{prompt, chosen, rejected, pair_id, chosen_eos, rejected_eos} for every pair with a
    preference; ties are dropped. The eos flags say whether each response ended by itself.

    Notebook: 03_reward_model.ipynb
    """
    rows = []
    for pair in pairs:
        if pair["label"] == "tie":
            continue
        win = int(pair["label"])
        rows.append(
            {
                "prompt": pair["prompt"],
                "chosen": pair["responses"][win],
                "rejected": pair["responses"][1 - win],
                "pair_id": pair["pair_id"],
                "chosen_eos": pair["eos"][win],
                "rejected_eos": pair["eos"][1 - win],
            }
        )
    return rows


def load_pairs(split: str = "train", path=None) -> list[dict]:
    """Labeled pairs from data/preferences_{train,heldout}.jsonl, schema-checked."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    path = path or data_dir() / f"preferences_{split}.jsonl"
    rows = read_jsonl(path, PAIR_SCHEMA, PAIR_OPTIONAL)
    for line, row in enumerate(rows, start=1):
        for field in ("responses", "eos", "tokens", "gold"):
            if len(row[field]) != 2:
                raise DataError(f"{path}, row {line}, field {field!r}: expected 2 entries, got {len(row[field])}")
        if row["label"] not in LABELS:
            raise DataError(f"{path}, row {line}, field 'label': {row['label']!r} is not one of {LABELS}")
    return rows


def reward_training_rows(n_pairs: int, seed: int, *, whole_prompts: bool = False) -> tuple[list[dict], int]:
    """The reward model's training pairs: the learner's exported labels from notebook 02
    (artifacts/labels/you_pairs.jsonl, all of them, first), then the annotator's train pairs in a
    seeded shuffle, `n_pairs` in all (more only if the learner labeled more). With `whole_prompts`,
    the annotator's pairs come a prompt at a time (all of a prompt's pairs, the prompts in a seeded
    shuffle) until `n_pairs` are reached, for a reward model that batches by prompt
    (`RewardConfig.group_by_prompt`). Returns (rows, how many are the learner's).
    Notebooks: 03_reward_model.ipynb, and 04 when it retrains the model.
    """
    import json
    import random

    from rlhf_edu.store import artifacts_dir

    annotator_rows = to_preference_rows(load_pairs("train"))
    mine_path = artifacts_dir() / "labels" / "you_pairs.jsonl"
    mine = [json.loads(line) for line in mine_path.read_text().splitlines()] if mine_path.exists() else []
    wanted = max(0, n_pairs - len(mine))
    if not whole_prompts:
        random.Random(seed).shuffle(annotator_rows)
        return mine + annotator_rows[:wanted], len(mine)
    return mine + whole_prompts_rows(annotator_rows, wanted, seed), len(mine)


def whole_prompts_rows(rows: list[dict], n_pairs: int, seed: int) -> list[dict]:
    """All the rows of one prompt after another, the prompts in a seeded shuffle, until at least
    `n_pairs` rows are taken (the last prompt's rows all come, so a few more may)."""
    import random

    from rlhf_edu.training import prompt_groups

    groups = sorted(prompt_groups([r["prompt"] for r in rows]), key=lambda g: rows[g[0]]["prompt"])
    taken: list[dict] = []
    for group in random.Random(seed).sample(groups, len(groups)):
        if len(taken) >= n_pairs:
            break
        taken += [rows[i] for i in group]
    return taken


def training_data_fingerprint() -> str:
    """A short hash of what the reward model learns from: the annotator's train pairs and the
    learner's exported labels. A saved reward model whose fingerprint differs is stale."""
    import hashlib

    from rlhf_edu.store import artifacts_dir

    digest = hashlib.sha256()
    for path in (data_dir() / "preferences_train.jsonl", artifacts_dir() / "labels" / "you_pairs.jsonl"):
        digest.update(path.read_bytes() if path.exists() else b"-")
    return digest.hexdigest()[:16]
