"""bench/gpu.py's memory estimate: its parameter count must match the real architectures."""

import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import gpu


@pytest.mark.parametrize("arch", list(gpu.ARCHS))
def test_parameter_count_matches_the_architecture(arch):
    hidden, layers, heads, kv, inter = gpu.ARCHS[arch]
    config = LlamaConfig(
        vocab_size=gpu.VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=inter,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert gpu.n_params(hidden, layers, heads, kv, inter) == sum(p.numel() for p in model.parameters())


def test_estimate_grows_with_the_model_and_the_batch():
    small = gpu.estimate_gib("SmolLM2-135M", 16, 104, 64)
    assert abs(small["params_m"] - 134.5) < 0.1
    assert gpu.estimate_gib("SmolLM2-360M", 16, 104, 64)["total_gib"] > small["total_gib"]
    assert gpu.estimate_gib("SmolLM2-135M", 32, 104, 64)["activations_gib"] > small["activations_gib"]
