import pytest
import torch

from rlhf_edu.models import (
    OFFLINE_DEFAULT,
    ModelNotAvailableError,
    choose_device_setup,
    cpu_has_native_bf16,
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
