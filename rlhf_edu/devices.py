"""Device and dtype: where the course computes and in which precision.

CUDA with bf16 (compute capability 8.0+) uses bf16 autocast; a T4 (7.5) uses fp16 autocast with a
gradient scaler; a CPU with native bf16 (avx512_bf16 or AMX) uses bf16 autocast; any other CPU uses
fp32. `RLHF_EDU_DTYPE=fp32|bf16|fp16` overrides the choice. Losses stay fp32, and under bf16 the
log-probs of PPO's and GRPO's ratio and KL are computed in fp32 (`logps_autocast`): bf16 keeps 8
significant bits, the order of PPO's clip range. docs/models_and_devices.md#device-and-dtype
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPE_ENV = "RLHF_EDU_DTYPE"


DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class DeviceSetup:
    """Where the course computes and in which dtype."""

    device: str
    """`cuda` or `cpu`."""
    autocast_dtype: torch.dtype | None
    """bf16 or fp16 for autocast, None for plain fp32. Log-probs and losses stay fp32 regardless."""
    grad_scaler: bool
    """True with fp16 autocast (T4), whose small range needs loss scaling."""
    reason: str
    """Why, in one line a notebook prints."""

    @property
    def dtype_name(self) -> str:
        """`fp32`, `bf16` or `fp16`: the compute dtype in the words of `RLHF_EDU_DTYPE`."""
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]

    @property
    def logp_tolerance(self) -> float:
        """Nats by which two computations of the same token's log-prob may differ at the worst token
        of a batch when only the batch's shape or the compute path differs (a KV-cached sampling loop
        against one full forward, other padding, other micro-batches). fp32 keeps 24 significant bits
        and such differences stay below 1e-4; autocast rounds every matrix product's output to 8 bits
        (bf16, a relative step of 0.4%) or 11 bits (fp16), and through 30 blocks the worst of a
        thousand tokens then moves by most of a nat in bf16 (notebook 04 prints the gap between the
        bf16 sampler and an fp32 forward; fp16 is 8 times finer; docs/implementation_details.md#ratio-check)."""
        return {None: 1e-3, torch.bfloat16: 1.0, torch.float16: 0.1}[self.autocast_dtype]

    @property
    def logp_mean_tolerance(self) -> float:
        """The same, averaged over a batch's tokens: a systematic mismatch (a temperature applied on one
        side only, the wrong tokens scored) moves every token and shows here, while rounding averages
        out to a few hundredths of a nat in bf16 and to almost nothing in fp32."""
        return {None: 1e-4, torch.bfloat16: 0.1, torch.float16: 0.02}[self.autocast_dtype]

    @property
    def fp32_logps(self) -> bool:
        """True under bf16: PPO and GRPO then compute the log-probs that enter the ratio and the
        KL (policy old and new, reference, the frozen trunk) in fp32. In bf16 the same tokens'
        log-probs move with the batch's shape (`logp_tolerance`), and the old and new log-probs of a
        minibatch come from different batches: |ratio - 1| on the first minibatch, where it must be
        0, reaches the order of PPO's clip range on a CPU with native bf16, so the clip would act on
        noise (bench/first_ratio.py measures it; docs/results.md).
        Sampling and the reward model stay in bf16. fp16 (T4) keeps 11 bits, 8 times finer, and
        keeps autocast for speed."""
        return self.autocast_dtype == torch.bfloat16

    @property
    def ratio_tolerance(self) -> float:
        """Largest |ratio - 1| expected on the first minibatch of a PPO or GRPO update, where old and
        new log-probs are the same model on the same tokens in other batch shapes: 1e-4 when those
        log-probs are computed in fp32 (fp32, and bf16 by `fp32_logps`); 0.05 under fp16 autocast,
        a bound from its 11-bit mantissa, with a margin."""
        return 0.05 if self.autocast_dtype == torch.float16 else 1e-4


def choose_device_setup(
    device: str,
    *,
    cuda_capability: tuple[int, int] | None = None,
    cpu_bf16: bool = False,
    dtype: str | None = None,
) -> DeviceSetup:
    """The README's dtype rules as a pure function (unit-tested for a T4, an A100 and CPUs).

    - CUDA with bf16 (compute capability 8.0 or newer: A100, L4, H100): bf16 autocast.
    - CUDA without bf16 (a T4 is 7.5): fp16 autocast with a gradient scaler.
    - CPU with native bf16 instructions (avx512_bf16 or AMX): bf16 autocast, faster for
      SmolLM2-135M; any other CPU: fp32, since emulated bf16 is slower than fp32 (`make bench`).

    `dtype` (`fp32`, `bf16` or `fp16`; what `RLHF_EDU_DTYPE` sets) overrides the rule: bf16 on a
    CPU without native bf16 is emulated (slow, but the same numerics), fp16 needs CUDA.
    """
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
    if dtype is not None:
        dtype = dtype.strip().lower()
        if dtype not in DTYPES:
            raise ValueError(
                f"{DTYPE_ENV}={dtype!r} is not a dtype; choose one of {sorted(DTYPES)} (or leave it unset)"
            )
        if dtype == "fp16" and device != "cuda":
            raise ValueError(f"{DTYPE_ENV}=fp16 needs a CUDA GPU; on a CPU choose fp32 or bf16")
        forced = f"{dtype} ({DTYPE_ENV}={dtype})"
        if dtype == "fp32":
            return DeviceSetup(device, None, False, f"{device}, {forced}")
        return DeviceSetup(device, DTYPES[dtype], dtype == "fp16", f"{device}, {dtype} autocast ({DTYPE_ENV}={dtype})")
    if device == "cuda":
        if cuda_capability is not None and cuda_capability >= (8, 0):
            return DeviceSetup("cuda", torch.bfloat16, False, "CUDA with bf16: bf16 autocast")
        return DeviceSetup("cuda", torch.float16, True, "CUDA without bf16 (e.g. T4): fp16 autocast + grad scaler")
    if cpu_bf16:
        return DeviceSetup("cpu", torch.bfloat16, False, "CPU with native bf16: bf16 autocast")
    return DeviceSetup("cpu", None, False, "CPU without native bf16: fp32")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True if the CPU flags include avx512_bf16 or amx_bf16 (Linux `/proc/cpuinfo`)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set(cpuinfo.split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def device_setup(device: str | None = None) -> DeviceSetup:
    """Detect this machine (or use `device`) and apply `choose_device_setup`;
    `RLHF_EDU_DTYPE=fp32|bf16|fp16` overrides the dtype (every notebook and test calls this, so they
    all follow it)."""
    dtype = os.environ.get(DTYPE_ENV, "").strip() or None
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return choose_device_setup("cuda", cuda_capability=torch.cuda.get_device_capability(), dtype=dtype)
    return choose_device_setup(device, cpu_bf16=cpu_has_native_bf16(), dtype=dtype)


def autocast(setup: DeviceSetup):
    """The autocast context for `setup` (a no-op in fp32)."""
    if setup.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(setup.device, dtype=setup.autocast_dtype)


def logps_autocast(setup: DeviceSetup):
    """The context for log-probs that enter PPO's and GRPO's ratio and KL: plain fp32 under bf16
    (`DeviceSetup.fp32_logps`), else `autocast(setup)`."""
    return contextlib.nullcontext() if setup.fp32_logps else autocast(setup)


def policy_gradient_precision(setup, config):
    """What PPO and GRPO compute in: (setup, autocast context, log-prob context, ratio tolerance).
    `setup` defaults to this machine's; the log-probs of the ratio and KL run in fp32 under bf16
    (`logps_autocast`); the first-minibatch ratio tolerance is `config.ratio_tolerance` or the dtype's."""
    setup = setup or device_setup()
    tolerance = setup.ratio_tolerance if config.ratio_tolerance is None else config.ratio_tolerance
    return setup, autocast(setup), logps_autocast(setup), tolerance
