import pytest
import torch

from rlhf_edu.models import tiny_model_and_tokenizer


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture
def artifacts(tmp_path, monkeypatch):
    """A fresh artifacts folder for this test (RLHF_EDU_ARTIFACTS)."""
    monkeypatch.setenv("RLHF_EDU_ARTIFACTS", str(tmp_path / "artifacts"))
    return tmp_path / "artifacts"


@pytest.fixture(params=["llama", "gpt2"])
def tiny(request):
    """A tiny random model and its character-level tokenizer, Llama-style and GPT-2-style."""
    return tiny_model_and_tokenizer(request.param, seed=0)


@pytest.fixture(scope="session")
def real():
    """The offline SmolLM2-135M-Instruct (prepared by `make setup`)."""
    from rlhf_edu.models import load_model

    return load_model()


@pytest.fixture
def sigkill_when():
    """kill(proc, ready, message): wait (up to 2 minutes) until `ready()` holds, then kill the child
    process with SIGKILL, reap it, and check that SIGKILL is what ended it."""
    import os
    import signal
    import time

    def kill(proc, ready, message: str, timeout: float = 120.0) -> None:
        try:
            deadline = time.monotonic() + timeout
            while not ready() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert ready(), message
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL

    return kill
