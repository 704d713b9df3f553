"""Rebuild data/preferences_{train,heldout}.jsonl reproducibly.

    .venv/bin/python scripts/build_preferences.py            # about 15 minutes on 2 CPU cores

1. The policy: the SFT checkpoint of notebook 01 at the cpu preset (artifacts/sft), trained here
   with the same code and seed if it is missing.
2. For every concept (train concepts: the training pairs; eval concepts: the held-out pairs), one
   sample at each of `--temperatures` (64 new tokens) and every pair among them: 4 temperatures give
   6 pairs per concept. Cool samples tend to repeat themselves, hot ones to ramble and not finish,
   so the pairs span the quality differences a reward model must learn, not only the small ones
   between two samples at one temperature.
3. Labels from the simulated annotator (AnnotatorConfig defaults unless given).
4. data/preferences_meta.json records the policy, seeds, sampling and annotator settings.

Work is appended as it goes; rerunning continues where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from rlhf_edu.annotator import AnnotatorConfig, SimulatedAnnotator
from rlhf_edu.data import data_dir, load_concepts, load_sft_demos, make_prompt
from rlhf_edu.devices import autocast, device_setup
from rlhf_edu.generation import SamplingConfig
from rlhf_edu.models import load_model
from rlhf_edu.preferences import label_pair, sample_pairs
from rlhf_edu.presets import get_preset
from rlhf_edu.rubric import score
from rlhf_edu.sft import train_sft
from rlhf_edu.store import artifacts_dir, write_json


def sft_policy(preset_name: str):
    ckpt = artifacts_dir() / "sft"
    info_file = ckpt / "run_info.json"
    preset = get_preset(preset_name)
    if info_file.exists() and json.loads(info_file.read_text())["config"] == dataclasses.asdict(preset.sft):
        print(f"policy: SFT checkpoint {ckpt}")
        return load_model(str(ckpt)), ckpt
    print(f"policy: training SFT at the {preset_name} preset into {ckpt}")
    model, tok = load_model(preset.model_name)
    torch.manual_seed(preset.seed)
    train_sft(model, tok, list(load_sft_demos()), preset.sft, out_dir=ckpt)
    return (model, tok), ckpt


def relabel(out: Path) -> int:
    """Recompute every gold score and label from the pair's text with the current rubric and
    AnnotatorConfig (no sampling)."""
    annotator_cfg = AnnotatorConfig()
    annotator = SimulatedAnnotator(annotator_cfg)
    for split in ("heldout", "train"):
        path = out / f"preferences_{split}.jsonl"
        pairs = [json.loads(line) for line in path.read_text().splitlines()]
        for pair in pairs:
            pair["gold"] = [round(score(pair["prompt"], r, e)[0], 6) for r, e in zip(pair["responses"], pair["eos"])]
            pair["label"] = label_pair(pair, annotator)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
        tmp.replace(path)
        print(f"{split}: relabeled {len(pairs)} pairs")
    meta_path = out / "preferences_meta.json"
    meta = json.loads(meta_path.read_text())
    meta["annotator"] = dataclasses.asdict(annotator_cfg)
    write_json(meta_path, meta)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu", help="preset whose SFT config builds the policy")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.3, 0.7, 1.0, 1.3])
    ap.add_argument("--batch-prompts", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", type=Path, default=data_dir())
    ap.add_argument("--relabel", action="store_true", help="only relabel the pairs on disk with the current annotator")
    args = ap.parse_args(argv)
    if args.relabel:
        return relabel(args.out)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    (model, tok), ckpt = sft_policy(args.preset)
    setup = device_setup()
    sampling = SamplingConfig(max_new_tokens=64, temperature=args.temperatures[0], batch_size=args.batch_prompts)
    temperatures = tuple(args.temperatures)
    annotator_cfg = AnnotatorConfig()
    annotator = SimulatedAnnotator(annotator_cfg)
    meta = {
        "policy": f"SFT checkpoint of notebook 01 at the {args.preset} preset",
        "policy_config": json.loads((ckpt / "run_info.json").read_text())["config"],
        "sampling": {"max_new_tokens": sampling.max_new_tokens, "temperatures": list(temperatures)},
        "pairs_per_concept": len(temperatures) * (len(temperatures) - 1) // 2,
        "seed": args.seed,
        "annotator": dataclasses.asdict(annotator_cfg),
        "heldout": "pairs on the eval concepts, which SFT never saw",
    }
    for split, concept_split in [("heldout", "eval"), ("train", "train")]:
        concepts = list(load_concepts(concept_split)["concept"])
        path = args.out / f"preferences_{split}.jsonl"
        done = (
            {json.loads(line)["pair_id"].rsplit("-", 1)[0] for line in path.read_text().splitlines()}
            if path.exists()
            else set()
        )
        todo = [i for i in range(len(concepts)) if f"{split}-{i:04d}" not in done]
        print(f"{split}: {len(done)} concepts on disk, {len(todo)} to go", flush=True)
        start = time.perf_counter()
        for k in range(0, len(todo), args.batch_prompts):
            chunk = todo[k : k + args.batch_prompts]
            prompts = [make_prompt(concepts[i]) for i in chunk]
            pairs = sample_pairs(
                model,
                tok,
                prompts,
                sampling,
                seed=args.seed + 100_003 * (split == "train") + chunk[0],
                temperatures=temperatures,
                autocast_ctx=autocast(setup),
            )
            per_concept = len(pairs) // len(chunk)
            with path.open("a", encoding="utf-8") as f:
                for n, pair in enumerate(pairs):
                    i = chunk[n // per_concept]
                    pair = {
                        "pair_id": f"{split}-{i:04d}-{n % per_concept}",
                        "concept": concepts[i],
                        **{k2: v for k2, v in pair.items() if k2 != "pair_id"},
                    }
                    pair["label"] = label_pair(pair, annotator)
                    f.write(json.dumps(pair, ensure_ascii=False) + "\n")
            rate = (time.perf_counter() - start) / (k + len(chunk))
            print(f"  {split}: {k + len(chunk)}/{len(todo)} concepts, {rate:.2f} s/concept", flush=True)
    write_json(args.out / "preferences_meta.json", meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
