import dataclasses

import pytest

from rlhf_edu.presets import PRESETS, default_preset_name, get_preset


def test_env_var_picks(monkeypatch):
    monkeypatch.setenv("RLHF_EDU_PRESET", "smoke")
    assert get_preset().name == "smoke"
    monkeypatch.setenv("RLHF_EDU_PRESET", "CPU")
    assert get_preset().name == "cpu"


def test_automatic_choice(monkeypatch):
    monkeypatch.delenv("RLHF_EDU_PRESET", raising=False)
    assert default_preset_name(cuda_available=True) == "gpu"
    assert default_preset_name(cuda_available=False) == "cpu"


def test_bad_preset_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("RLHF_EDU_PRESET", "fast")
    with pytest.raises(ValueError, match="RLHF_EDU_PRESET='fast'"):
        get_preset()
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")


def test_presets_grow_in_budget():
    smoke, cpu, gpu = PRESETS["smoke"], PRESETS["cpu"], PRESETS["gpu"]
    assert smoke.sft.max_steps < cpu.sft.max_steps < gpu.sft.max_steps
    assert smoke.n_eval < cpu.n_eval <= gpu.n_eval
    assert dataclasses.replace(cpu.sft, lr=1e-5).lr == 1e-5  # presets are the stage dataclasses
