import pytest
import torch

from rlhf_edu.devices import choose_device_setup, cpu_has_native_bf16
from rlhf_edu.models import (
    OFFLINE_DEFAULT,
    ModelNotAvailableError,
    load_model,
    setup_tokenizer,
    tiny_model,
    tiny_tokenizer,
)


def test_dtype_rules_t4_a100_cpu():
    t4 = choose_device_setup("cuda", cuda_capability=(7, 5))
    assert (t4.autocast_dtype, t4.grad_scaler) == (torch.float16, True)
    a100 = choose_device_setup("cuda", cuda_capability=(8, 0))
    assert (a100.autocast_dtype, a100.grad_scaler) == (torch.bfloat16, False)
    h100 = choose_device_setup("cuda", cuda_capability=(9, 0))
    assert h100.autocast_dtype == torch.bfloat16
    assert choose_device_setup("cpu", cpu_bf16=False).autocast_dtype is None
    assert choose_device_setup("cpu", cpu_bf16=True).autocast_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="device"):
        choose_device_setup("tpu")


def test_cpu_flag_detection():
    assert cpu_has_native_bf16("flags : fpu avx512f avx512_bf16 amx_tile")
    assert cpu_has_native_bf16("flags : amx_bf16")
    assert not cpu_has_native_bf16("flags : fpu avx2 avx512f")


def test_pad_made_distinct_from_eos_with_a_spare_token():
    tok = tiny_tokenizer()
    assert tok.pad_token_id == tok.eos_token_id  # as SmolLM2 ships it
    model = tiny_model("llama", vocab_size=len(tok))
    setup_tokenizer(tok, model)
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.pad_token == "<|endoftext|>"
    assert tok.padding_side == "left"
    assert model.config.pad_token_id == tok.pad_token_id


def test_pad_added_when_no_spare_token():
    # GPT-2 style: unk == eos == pad, so a new pad token and one more embedding row.
    tok = tiny_tokenizer()
    tok.unk_token = "<|im_end|>"
    model = tiny_model("gpt2", vocab_size=len(tok))
    n = model.get_input_embeddings().num_embeddings
    setup_tokenizer(tok, model)
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id != tok.eos_token_id
    assert model.get_input_embeddings().num_embeddings == n + 1


def test_generation_config_is_neutral():
    tok = tiny_tokenizer()
    model = tiny_model("llama", vocab_size=len(tok))
    model.generation_config.top_k = 50
    setup_tokenizer(tok, model)
    assert model.generation_config.top_k == 0 and model.generation_config.top_p == 1.0


def test_local_checkpoint_roundtrip(tmp_path):
    from rlhf_edu.models import tiny_model_and_tokenizer

    model, tok = tiny_model_and_tokenizer("llama")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded, tok2 = load_model(str(tmp_path))
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    assert tok2.pad_token_id != tok2.eos_token_id


def test_unknown_hub_id_offline_names_the_default(monkeypatch, tmp_path):
    from rlhf_edu import models

    monkeypatch.setattr(models, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelNotAvailableError, match=OFFLINE_DEFAULT):
        load_model("EleutherAI/pythia-160m")


def test_tiny_model_rejects_unknown_arch():
    with pytest.raises(ValueError, match="arch"):
        tiny_model("mamba")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt_neox", "gpt2"])
def test_disable_dropout_also_zeroes_attention_dropout(arch):
    """Llama, Qwen2 and GPT-NeoX copy `config.attention_dropout` into a float on each attention
    module when the model is built (no nn.Dropout to find): with 0.1, two forwards in train mode
    differed by about 0.1 nats before disable_dropout zeroed those floats too."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlhf_edu.models import disable_dropout

    sizes = {
        "vocab_size": 99,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    }
    if arch == "gpt2":
        sizes = {
            "vocab_size": 99,
            "n_embd": 32,
            "n_layer": 2,
            "n_head": 2,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "resid_pdrop": 0.1,
            "embd_pdrop": 0.1,
            "attn_pdrop": 0.1,
        }
    else:
        sizes["attention_dropout"] = 0.1
        sizes["hidden_dropout"] = 0.1  # GPT-NeoX's other dropout (an nn.Dropout)
    if arch in ("llama", "qwen2"):
        sizes["num_key_value_heads"] = 2
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(arch, **sizes), dtype=torch.float32)
    disable_dropout(model)
    model.train()
    ids = torch.randint(0, 99, (2, 7), generator=torch.Generator().manual_seed(0))  # (B, T)
    first, second = model(ids).logits, model(ids).logits  # (B, T, V) each
    assert torch.equal(first, second)
    left = [
        (name, key)
        for name, module in model.named_modules()
        for key, value in vars(module).items()
        if ("dropout" in key or "pdrop" in key) and isinstance(value, float) and value != 0.0
    ]
    assert left == []
