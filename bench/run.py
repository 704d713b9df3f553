"""Benchmarks on this machine, printed as a table and written to artifacts/bench.json.

So far: SmolLM2-135M generation, forward and SFT-step times in fp32 and under bf16 autocast, which is
how the course decides the CPU dtype (models.choose_device_setup). Compare the columns as ratios
measured in one run; absolute seconds move with the machine's load.
"""

from __future__ import annotations

import json
import time

import torch

from rlhf_edu.generation import SamplingConfig, sample
from rlhf_edu.models import autocast, choose_device_setup, device_setup, load_model
from rlhf_edu.sft import build_sft_batch, sft_batch_loss
from rlhf_edu.store import artifacts_dir, write_json

B, GEN_TOKENS, SEQ_TOKENS = 8, 64, 128


def timed(fn, repeats: int = 2) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def time_one_dtype(name, setup, model, tok, prompts, batch, optimizer) -> dict:
    def generate():
        sample(model, tok, prompts, SamplingConfig(max_new_tokens=GEN_TOKENS, batch_size=B),
               generator=torch.Generator().manual_seed(0), autocast_ctx=autocast(setup))

    def forward():
        with torch.no_grad(), autocast(setup):
            sft_batch_loss(model, batch)

    def sft_step():
        with autocast(setup):
            loss = sft_batch_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return {"dtype": name, "generate_s": timed(generate, 1), "forward_s": timed(forward), "sft_step_s": timed(sft_step)}


def main() -> None:
    model, tok = load_model()
    prompts = [f"Explain topic number {i} to a 10-year-old." for i in range(B)]
    long_response = " ".join(["Rain is water falling from clouds."] * 20)
    ids = tok(long_response, add_special_tokens=False).input_ids[: SEQ_TOKENS - 40]
    batch = build_sft_batch(tok, prompts, [tok.decode(ids)] * B, max_response_tokens=SEQ_TOKENS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)
    rows = [
        time_one_dtype(name, setup, model, tok, prompts, batch, optimizer)
        for name, setup in [("fp32", choose_device_setup("cpu", cpu_bf16=False)),
                            ("bf16 autocast", choose_device_setup("cpu", cpu_bf16=True))]
    ]
    chosen = device_setup()
    print(f"SmolLM2-135M, batch {B}: generate {GEN_TOKENS} new tokens (stops early if all end); "
          f"forward and SFT step on {batch['input_ids'].shape[1]} tokens. torch threads: {torch.get_num_threads()}")
    print(f"{'dtype':15s} {'generate s':>11s} {'forward s':>10s} {'SFT step s':>11s}")
    for r in rows:
        print(f"{r['dtype']:15s} {r['generate_s']:11.2f} {r['forward_s']:10.2f} {r['sft_step_s']:11.2f}")
    print(f"course choice on this machine: {chosen.reason}")
    path = artifacts_dir() / "bench.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    previous["dtype_cpu"] = {"rows": rows, "chosen": chosen.reason}
    previous["gpu_memory"] = gpu_memory_table()
    write_json(path, previous)
    print(f"wrote {path}")


def gpu_memory_table() -> dict:
    """PPO at the gpu preset: the computed estimate for SmolLM2-135M and -360M on a 16 GB T4, beside
    the figures `bench/gpu.py measure` recorded on a CUDA machine (bench/results/)."""
    from pathlib import Path

    from gpu import ARCHS, estimate_gib

    from rlhf_edu.presets import get_preset

    ppo = get_preset("gpu").ppo
    r = ppo.sampling.max_new_tokens
    estimate = [estimate_gib(a, ppo.micro_batch_size, 40 + r, r) for a in ARCHS]
    measured_path = Path(__file__).parent / "results" / "gpu_memory_h200.json"
    measured = json.loads(measured_path.read_text()) if measured_path.exists() else []
    print(f"PPO at the gpu preset (batch {ppo.batch_size}, micro-batch {ppo.micro_batch_size}, {r} new tokens):")
    print(f"{'model':14s} {'estimate GiB':>13s} {'measured peak GiB':>18s} {'fits a 16 GB T4':>16s}")
    for row in estimate:
        peaks = [m["peak_gib"] for m in measured if m["arch"] == row["arch"]]
        peak = f"{max(peaks):.2f}" if peaks else "not measured"
        print(f"{row['arch']:14s} {row['total_gib']:13.2f} {peak:>18s} {row['fits_t4_16gb']!s:>16s}")
    return {"estimate": estimate, "measured": measured}


if __name__ == "__main__":
    main()
