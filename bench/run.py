"""Benchmarks on this machine, printed as tables and written to artifacts/bench.json.

1. SmolLM2-135M generation, forward and SFT-step times in fp32 and under bf16 autocast, which is how
   the course decides the CPU dtype (devices.choose_device_setup).
2. PPO against TRL's PPOTrainer at the cpu preset's settings (bench/trl_ppo.py, run in the bench
   environment `.venv-bench` that `make bench-env` builds): seconds per step of both, our step split
   into generation, frozen trunk, policy and critic, reference, reward model and update, rollout
   tokens per second, and the gold and reward-model score each reaches after the same steps.
3. Peak memory (RSS) of each notebook at the cpu preset, from the course summary of the last
   `make course PRESET=cpu` run; the GPU memory estimate (bench/gpu.py) for a 16 GB T4.
Compare columns as ratios measured in one run; absolute seconds move with the machine's load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from rlhf_edu.batches import build_sft_batch
from rlhf_edu.devices import autocast, choose_device_setup, device_setup
from rlhf_edu.generation import SamplingConfig, sample
from rlhf_edu.models import load_model
from rlhf_edu.sft import sft_batch_loss
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
        sample(
            model,
            tok,
            prompts,
            SamplingConfig(max_new_tokens=GEN_TOKENS, batch_size=B),
            generator=torch.Generator().manual_seed(0),
            autocast_ctx=autocast(setup),
        )

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
        for name, setup in [
            ("fp32", choose_device_setup("cpu", cpu_bf16=False)),
            ("bf16 autocast", choose_device_setup("cpu", cpu_bf16=True)),
        ]
    ]
    chosen = device_setup()
    print(
        f"SmolLM2-135M, batch {B}: generate {GEN_TOKENS} new tokens (stops early if all end); "
        f"forward and SFT step on {batch['input_ids'].shape[1]} tokens. torch threads: {torch.get_num_threads()}"
    )
    print(f"{'dtype':15s} {'generate s':>11s} {'forward s':>10s} {'SFT step s':>11s}")
    for r in rows:
        print(f"{r['dtype']:15s} {r['generate_s']:11.2f} {r['forward_s']:10.2f} {r['sft_step_s']:11.2f}")
    print(f"course choice on this machine: {chosen.reason}")
    path = artifacts_dir() / "bench.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    previous["dtype_cpu"] = {"rows": rows, "chosen": chosen.reason}
    previous["dtype"] = chosen.dtype_name  # the course's dtype here: which record this run is
    previous["gpu_memory"] = gpu_memory_table()
    write_json(path, previous)  # what is measured so far survives a failure below
    previous["peak_rss_gb"] = notebook_memory_table()
    trl = trl_comparison()
    if trl is not None:
        previous["trl"] = trl
        previous["ppo_speedup_vs_trl"] = trl["ppo_speedup_vs_trl"]
        previous["seconds_per_step"] = trl["seconds_per_step"]
    write_json(path, previous)
    print(f"wrote {path}")


BENCH_PYTHON = Path(__file__).resolve().parents[1] / ".venv-bench" / "bin" / "python"
PARTS = ("generate", "trunk", "policy", "reference", "reward", "update")


def trl_comparison(steps: int = 3, critics: str = "shared,reward_model,shared_full") -> dict | None:
    """bench/trl_ppo.py in the bench environment (TRL is not a course dependency); prints its table
    and our step's split. None, with a message, when the environment is missing."""
    if not BENCH_PYTHON.exists():
        print(f"PPO against TRL: skipped, {BENCH_PYTHON} is missing (make bench-env builds it)")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "trl.json"
        cmd = [
            str(BENCH_PYTHON),
            str(Path(__file__).with_name("trl_ppo.py")),
            "--steps",
            str(steps),
            "--critics",
            critics,
            "--json",
            str(out),
        ]
        subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        result = json.loads(out.read_text())
    print("\nour PPO step, mean seconds per part (steps 2..N):")
    print(f"{'run':24s}" + "".join(f"{p:>10s}" for p in PARTS) + f"{'step':>8s}{'tok/s':>8s}")
    for name, prof in result["profile"].items():
        print(
            f"{name:24s}"
            + "".join(f"{prof.get(f'time/{p}_s', 0.0):10.2f}" for p in PARTS)
            + f"{prof['time/step_s']:8.2f}{prof['time/tokens_per_s']:8.0f}"
        )
    return result


def notebook_memory_table() -> dict:
    """Peak RSS (GB) of each notebook at the cpu preset, from artifacts/course_summary.json."""
    path = artifacts_dir() / "course_summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    if summary.get("preset") != "cpu":
        print(f"peak memory per notebook: no cpu course summary at {path} (make course PRESET=cpu)", file=sys.stderr)
        return {}
    peaks = {
        name: nb["metrics"]["peak_rss_gb"]
        for name, nb in summary["notebooks"].items()
        if "peak_rss_gb" in nb.get("metrics", {})
    }
    print("\npeak RSS per notebook at the cpu preset (GB, from the last cpu course run):")
    for name, gb in peaks.items():
        print(f"  {name:26s} {gb:5.2f}")
    return peaks


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
