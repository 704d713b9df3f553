"""GPU memory of PPO at the gpu preset: a computed estimate, and measured figures on a CUDA machine.

    python bench/gpu.py estimate                 # no GPU needed: the table for a 16 GB T4
    python bench/gpu.py check                    # CUDA: SFT, reward-model and PPO steps on tiny models
    python bench/gpu.py measure --config DIR     # CUDA: PPO steps of SmolLM2-135M and -360M architectures

`measure` builds the models from `DIR/config.json` (SmolLM2-135M-Instruct's config; the 360M config is
derived from it) with random weights: memory depends on the architecture and the shapes, not on the
weights. A random model never emits EOS, so every response runs to the full token budget, the worst
case for memory and time. Both T4 rules are measured: fp16 autocast with a gradient scaler (what a T4
uses) and bf16 autocast (A100/L4/H100).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhf_edu.devices import choose_device_setup
from rlhf_edu.generation import SamplingConfig
from rlhf_edu.ppo_trainer import PPOTrainer
from rlhf_edu.presets import get_preset

GIB = 2**30
ARCHS = {  # name -> (hidden, layers, heads, kv heads, intermediate): SmolLM2 model cards' configs
    "SmolLM2-135M": (576, 30, 9, 3, 1536),
    "SmolLM2-360M": (960, 32, 15, 5, 2560),
}
VOCAB = 49152


def n_params(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int) -> int:
    head_dim = hidden // heads
    attention = hidden * hidden * 2 + 2 * hidden * kv_heads * head_dim  # q, o, k, v
    mlp = 3 * hidden * intermediate
    return VOCAB * hidden + layers * (attention + mlp + 2 * hidden) + hidden  # tied embeddings


def estimate_gib(arch: str, micro_batch: int, tokens: int, response_tokens: int) -> dict:
    """Bytes of PPO with the shared critic, fp32 weights, autocast compute, full fine-tuning.

    Weights: policy, reference and reward model (3 x 4 bytes per parameter); the policy's gradients
    (4) and Adam's two moments (8). Activations of one micro-batch kept for the backward pass, per
    layer 34 s b h + 5 a s^2 b bytes in 16-bit (Korthikanti et al. 2022, no recomputation), plus the
    fp32 response logits and their gradient (2 x 4 b r V). Plus about 0.5 GiB of CUDA context.
    """
    hidden, layers, heads, kv, inter = ARCHS[arch]
    n = n_params(hidden, layers, heads, kv, inter)
    weights = 3 * 4 * n + 4 * n + 8 * n
    activations = layers * (34 * tokens * micro_batch * hidden + 5 * heads * tokens**2 * micro_batch)
    logits = 2 * 4 * micro_batch * response_tokens * VOCAB
    total = weights + activations + logits + 0.5 * GIB
    return {
        "arch": arch,
        "params_m": round(n / 1e6, 1),
        "weights_and_optimizer_gib": round(weights / GIB, 2),
        "activations_gib": round((activations + logits) / GIB, 2),
        "total_gib": round(total / GIB, 2),
        "fits_t4_16gb": total < 15 * GIB,
    }


def config_for(arch: str, base: dict) -> dict:
    hidden, layers, heads, kv, inter = ARCHS[arch]
    return {
        **base,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "intermediate_size": inter,
        "head_dim": hidden // heads,
    }


class LengthReward(torch.nn.Module):
    """A stand-in reward model of the reward model's cost: a copy of the backbone plus a linear head."""

    def __init__(self, causal_lm):
        super().__init__()
        from rlhf_edu.reward import RewardModel

        self.inner = RewardModel.from_causal_lm(copy.deepcopy(causal_lm))

    def forward(self, input_ids, attention_mask):
        return self.inner(input_ids, attention_mask)


def measure(config_dir: Path, steps: int, device: str = "cuda", batch: int | None = None) -> list[dict]:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from rlhf_edu.models import setup_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(config_dir)
    base = json.loads((config_dir / "config.json").read_text())
    ppo = get_preset("gpu").ppo
    ppo = replace(ppo, steps=steps, eval_every=10_000)
    if batch is not None:  # a dry run on a CPU
        ppo = replace(
            ppo,
            batch_size=batch,
            mini_batch_size=batch,
            micro_batch_size=batch,
            ppo_epochs=1,
            sampling=SamplingConfig(8, 0.7, batch),
        )
    cuda = device == "cuda"
    prompts = [f"Explain concept number {i} to a 10-year-old." for i in range(ppo.batch_size * steps)]
    rows = []
    for arch in ARCHS:
        for label, capability in (("fp16 + grad scaler (T4 rule)", (7, 5)), ("bf16", (9, 0))):
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            torch.manual_seed(0)
            config = LlamaConfig(**{k: v for k, v in config_for(arch, base).items() if k not in ("architectures",)})
            policy = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(device)
            setup_tokenizer(tokenizer, policy)
            reward = LengthReward(policy).to(device)
            setup = choose_device_setup("cuda", cuda_capability=capability) if cuda else choose_device_setup("cpu")
            trainer = PPOTrainer(policy, copy.deepcopy(policy), reward, tokenizer, prompts, ppo, setup=setup)
            times = []
            for _ in range(steps):
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                m = trainer.step()
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            rows.append(
                {
                    "arch": arch,
                    "dtype": label,
                    "peak_gib": round(torch.cuda.max_memory_allocated() / GIB, 2) if cuda else None,
                    "seconds_per_step_after_first": round(sum(times[1:]) / max(1, len(times) - 1), 2),
                    "response_length": m["response/length"],
                    "batch": ppo.batch_size,
                    "micro_batch": ppo.micro_batch_size,
                    "first_ratio_dev": m["health/first_ratio_dev"],
                    "device": torch.cuda.get_device_name() if cuda else "cpu",
                }
            )
            print(rows[-1], flush=True)
            del trainer, policy, reward
    return rows


def check(device: str = "cuda") -> dict:
    """The course's CUDA path on tiny models: SFT, reward model and PPO steps, sampling from a CPU seed."""
    from rlhf_edu.models import tiny_model_and_tokenizer
    from rlhf_edu.reward import RewardConfig, RewardModel
    from rlhf_edu.reward_training import train_reward_model
    from rlhf_edu.sft import SFTConfig, train_sft

    cuda = device == "cuda"
    out = {"device": torch.cuda.get_device_name() if cuda else "cpu"}
    for label, capability in (("fp16", (7, 5)), ("bf16", (9, 0))):
        setup = choose_device_setup("cuda", cuda_capability=capability) if cuda else choose_device_setup("cpu")
        model, tok = tiny_model_and_tokenizer()
        model = model.to(device)
        rows = [{"prompt": f"q{i}", "response": "a short answer."} for i in range(12)]
        hist = train_sft(
            model,
            tok,
            rows,
            SFTConfig(max_steps=3, batch_size=4, n_heldout=2, eval_every=3),
            setup=setup,
            progress=False,
        )
        rm = RewardModel.from_causal_lm(copy.deepcopy(model)).to(device)
        pairs = [{"prompt": f"q{i}", "chosen": "good answer.", "rejected": "bad"} for i in range(8)]
        rm_hist = train_reward_model(
            rm,
            tok,
            pairs,
            pairs[:4],
            RewardConfig(max_steps=2, batch_size=4, eval_every=2),
            setup=setup,
            progress=False,
        )
        ppo = replace(get_preset("smoke").ppo, trainable_layers=None, sampling=SamplingConfig(12, 0.7, 4))
        trainer = PPOTrainer(model, copy.deepcopy(model), rm, tok, [f"q{i}" for i in range(8)], ppo, setup=setup)
        metrics = [trainer.step() for _ in range(2)]
        out[label] = {
            "sft_loss": hist[-1]["train/loss"],
            "rm_eval_accuracy": rm_hist[-1]["eval/accuracy"],
            "ppo_first_ratio_dev": max(m["health/first_ratio_dev"] for m in metrics),
            "ppo_kl": metrics[-1]["objective/kl"],
            "ppo_finite": all(all(math.isfinite(v) for v in m.values() if isinstance(v, float)) for m in metrics),
        }
    print(json.dumps(out, indent=1))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["estimate", "check", "measure"])
    parser.add_argument("--config", type=Path, help="a folder with SmolLM2-135M's config.json and tokenizer")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run of measure")
    parser.add_argument("--batch", type=int, help="override the preset's batch (a dry run on a CPU)")
    args = parser.parse_args(argv)
    ppo = get_preset("gpu").ppo
    if args.what == "estimate":
        result = [
            estimate_gib(a, ppo.micro_batch_size, 40 + ppo.sampling.max_new_tokens, ppo.sampling.max_new_tokens)
            for a in ARCHS
        ]
        for row in result:
            print(row)
    elif args.what == "check":
        result = check(args.device)
    else:
        if args.config is None:
            parser.error("measure needs --config")
        result = measure(args.config, args.steps, args.device, args.batch)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
