"""Safe loading: checkpoints are safetensors, torch.load only with weights_only=True, and remote code
runs only when the user asks for it."""

import ast
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("rlhf_edu/*.py"), *ROOT.glob("bench/*.py"), *ROOT.glob("scripts/*.py")])


def calls(tree: ast.AST, name: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith(name):
            yield node


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_torch_load_only_with_weights_only(path):
    tree = ast.parse(path.read_text())
    for call in calls(tree, "torch.load"):
        kw = {k.arg: ast.unparse(k.value) for k in call.keywords}
        assert kw.get("weights_only") == "True", f"{path.name}:{call.lineno} torch.load without weights_only=True"
    assert not list(calls(tree, "pickle.load")), f"{path.name} unpickles data"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_remote_code_is_never_switched_on(path):
    for call in calls(ast.parse(path.read_text()), "from_pretrained"):
        kw = {k.arg: ast.unparse(k.value) for k in call.keywords}
        assert kw.get("trust_remote_code") in (None, "False", "trust_remote_code"), f"{path.name}:{call.lineno}"


def test_load_model_defaults_to_no_remote_code():
    from rlhf_edu.models import load_model

    assert inspect.signature(load_model).parameters["trust_remote_code"].default is False


def test_checkpoints_are_safetensors(tmp_path):
    """SFT, reward-model and PPO checkpoints hold no pickle of weights."""
    import copy

    from rlhf_edu.checkpoints import save_checkpoint
    from rlhf_edu.devices import device_setup
    from rlhf_edu.generation import SamplingConfig
    from rlhf_edu.models import tiny_model_and_tokenizer
    from rlhf_edu.ppo_loop import PPOConfig
    from rlhf_edu.ppo_trainer import PPOTrainer
    from rlhf_edu.reward import RewardModel
    from rlhf_edu.reward_training import save_reward_model

    model, tok = tiny_model_and_tokenizer()
    save_checkpoint(model, tok, tmp_path / "sft")
    save_reward_model(RewardModel.from_causal_lm(copy.deepcopy(model)), tok, tmp_path / "rm")
    config = PPOConfig(
        steps=1,
        batch_size=2,
        mini_batch_size=2,
        micro_batch_size=2,
        ppo_epochs=1,
        sampling=SamplingConfig(4, 1.0, 2),
        eval_every=10,
    )
    trainer = PPOTrainer(
        copy.deepcopy(model),
        model,
        RewardModel.from_causal_lm(copy.deepcopy(model)),
        tok,
        ["q"],
        config,
        setup=device_setup("cpu"),
    )
    trainer.save_checkpoint(tmp_path / "ppo")
    weights = [p for p in tmp_path.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".safetensors")]
    assert {p.suffix for p in weights} == {".safetensors", ".pt"}
    assert [p.name for p in weights if p.suffix == ".pt"] == ["optimizer.pt"]  # loaded with weights_only=True
