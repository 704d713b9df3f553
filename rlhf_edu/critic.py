"""Critics for PPO: the value function V(s_t) that GAE subtracts from the returns.

Two layouts (`PPOConfig.critic`): "shared", a linear value head on the policy's own last hidden
state (`value_head`, initialized to zero), and "reward_model", a separate network copied from the
reward model and read at every response position (`ValueModel`), as Stiennon et al. (2020) and
TRL do. Notebook: 04_ppo.ipynb
"""

from __future__ import annotations

import copy

import torch

from rlhf_edu.logprobs import position_ids_from_mask


def value_head(hidden_size: int) -> torch.nn.Linear:
    """The shared critic: a linear head on the policy's last hidden state, initialized to zero
    (OAI `fc_layer(scale=0)`), so every value starts at 0. Notebook: 04_ppo.ipynb"""
    head = torch.nn.Linear(hidden_size, 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return head


class ValueModel(torch.nn.Module):
    """The separate critic: a copy of the reward model's backbone and head, read at every response
    position instead of only the last (Stiennon et al. 2020; N+ `critic = from_pretrained(rm)`).

    values(input_ids, attention_mask, P) -> (B, R) fp32, V_t read at the hidden state that predicts
    response token t (the same positions as the policy's logits,
    docs/implementation_details.md#values-and-the-critic).
    Notebook: 04_ppo.ipynb
    """

    def __init__(self, reward_model: torch.nn.Module):
        super().__init__()
        self.backbone = copy.deepcopy(reward_model.backbone)
        self.head = copy.deepcopy(reward_model.head)
        self.register_buffer("gain", reward_model.gain.detach().clone())
        self.register_buffer("bias", reward_model.bias.detach().clone())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context_length: int) -> torch.Tensor:
        hidden = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        ).last_hidden_state[:, context_length - 1 : -1]  # (B, R, H)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return self.gain * self.head(hidden.float()).squeeze(-1) + self.bias  # (B, R)
