"""Artifacts are never silently reused across presets, data or base models (smoke then cpu in one
checkout): the SFT policy and the reward model carry what they were built from and are rebuilt when
it differs."""

import json
from dataclasses import asdict

from rlhf_edu.checkpoints import rows_fingerprint
from rlhf_edu.presets import get_preset
from rlhf_edu.reward_training import reward_model_key
from rlhf_edu.sft import sft_checkpoint_mismatch
from rlhf_edu.store import sft_run_id


def write_sft_info(folder, **info):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run_info.json").write_text(json.dumps(info))


def test_sft_checkpoint_of_another_preset_data_or_base_is_not_reused(tmp_path):
    ckpt = tmp_path / "sft"
    demos = [{"prompt": "p", "response": "r"}]
    wanted = {"config": asdict(get_preset("cpu").sft), "data": rows_fingerprint(demos), "base": "base-model"}
    assert "no SFT policy" in sft_checkpoint_mismatch(ckpt, wanted)
    write_sft_info(ckpt, **{**wanted, "config": asdict(get_preset("smoke").sft)})  # a smoke run's policy
    assert "another config" in sft_checkpoint_mismatch(ckpt, wanted)
    write_sft_info(ckpt, **{**wanted, "data": rows_fingerprint(demos + demos)})
    assert "another data" in sft_checkpoint_mismatch(ckpt, wanted)
    write_sft_info(ckpt, **{**wanted, "base": "other-model"})
    assert "another base" in sft_checkpoint_mismatch(ckpt, wanted)
    write_sft_info(ckpt, **wanted, history=[])
    assert sft_checkpoint_mismatch(ckpt, wanted) is None


def test_reward_model_key_names_preset_and_sft_policy(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_EDU_ARTIFACTS", str(tmp_path))
    assert sft_run_id() is None
    smoke, cpu = reward_model_key(get_preset("smoke")), reward_model_key(get_preset("cpu"))
    assert smoke["preset"] != cpu["preset"] and smoke["config"] != cpu["config"]
    write_sft_info(tmp_path / "sft", config={}, history=[1.0])
    first = reward_model_key(get_preset("cpu"))
    assert first["sft"] is not None and first != cpu
    write_sft_info(tmp_path / "sft", config={}, history=[2.0])  # notebook 01 saved another SFT policy
    assert reward_model_key(get_preset("cpu"))["sft"] != first["sft"]
