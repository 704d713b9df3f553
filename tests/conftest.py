import pytest
import torch

from rlhf_edu.models import tiny_model_and_tokenizer


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(params=["llama", "gpt2"])
def tiny(request):
    """A tiny random model and its character-level tokenizer, Llama-style and GPT-2-style."""
    return tiny_model_and_tokenizer(request.param, seed=0)


@pytest.fixture(scope="session")
def real():
    """The offline SmolLM2-135M-Instruct (prepared by `make setup`)."""
    from rlhf_edu.models import load_model

    return load_model()
