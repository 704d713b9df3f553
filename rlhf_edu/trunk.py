"""The frozen trunk: compute the lower transformer blocks once per rollout, not once per forward.

With `PPOConfig.trainable_layers = k`, the embeddings and the lower N - k blocks of the policy never
change during PPO, and the reference (the SFT policy the run started from) has the very same
weights there. On one rollout batch their output, the hidden state entering block N - k (the
*trunk*), is therefore the same for the policy's old log-probs, for the reference's log-probs and
for every forward of every PPO epoch. `FrozenTrunk` computes it once per rollout and runs only the
top k blocks (and the final norm and LM head) for each of those passes: the same numbers, a
fraction of the work (on the cpu preset, 8 of SmolLM2-135M's 30 blocks).

It feeds the trunk to the model as `inputs_embeds` with the model's block list cut to the top k
for the duration of the call. That is exact for architectures whose forward passes
`inputs_embeds` to the first block unchanged (`TRUNK_MODEL_TYPES`: Llama, the course's SmolLM2,
Mistral, Qwen); others (GPT-2 adds position embeddings to `inputs_embeds`, Gemma scales them)
use full forwards. `FrozenTrunk.check` compares both paths on a real batch before a run relies on
it. Notebook: 04_ppo.ipynb
"""

from __future__ import annotations

import contextlib

import torch

from rlhf_edu.logprobs import per_token_logps

TRUNK_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
"""Architectures whose forward hands `inputs_embeds` to the first block as it is."""


class _TrunkReady(Exception):
    """Raised from a forward hook to stop the forward once the trunk is computed."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__("trunk computed")
        self.hidden = hidden


def _blocks_owner(model: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """The module holding the block list, and the attribute's name."""
    from rlhf_edu.reward import backbone_of

    base = backbone_of(model)
    for name in ("layers", "h", "blocks"):
        if isinstance(getattr(base, name, None), torch.nn.ModuleList):
            return base, name
    raise ValueError(f"cannot find the transformer blocks of {type(base).__name__}")


class FrozenTrunk:
    """The lower `n_frozen` blocks of `policy`, computed once per batch and shared.

    `enabled` is False (and every method falls back to a full forward) when nothing is frozen,
    when the architecture is not in TRUNK_MODEL_TYPES, or when `check` found a difference.
    `shared_with_reference` says whether the reference may start from the policy's trunk: true when
    its embeddings and lower blocks are equal to the policy's, as for a reference that is a copy of
    the policy's starting point.
    """

    def __init__(self, policy: torch.nn.Module, trainable_layers: int | None, reference: torch.nn.Module | None = None):
        owner, name = _blocks_owner(policy)
        n_blocks = len(getattr(owner, name))
        model_type = getattr(getattr(policy, "config", None), "model_type", None)
        self.n_frozen = 0 if trainable_layers is None else max(0, n_blocks - trainable_layers)
        self.enabled = self.n_frozen > 0 and model_type in TRUNK_MODEL_TYPES
        self.reason = (
            f"the lower {self.n_frozen} of {n_blocks} blocks run once per rollout"
            if self.enabled
            else "no frozen blocks"
            if self.n_frozen == 0
            else f"full forwards ({model_type} feeds inputs_embeds to its blocks with changes)"
        )
        self.shared_with_reference = self.enabled and reference is not None and self._same_trunk(policy, reference)

    def _same_trunk(self, policy: torch.nn.Module, reference: torch.nn.Module) -> bool:
        """Whether `reference` has the policy's embeddings and lower blocks, weight for weight, their
        norms included. The top blocks and the final norm run on each model's own weights after
        the trunk, so only they may differ."""

        def lower(model):
            owner, name = _blocks_owner(model)
            frozen = torch.nn.ModuleList(list(getattr(owner, name))[: self.n_frozen])
            return list(owner.get_input_embeddings().named_parameters()) + list(frozen.named_parameters())

        mine, theirs = lower(policy), lower(reference)
        return len(mine) == len(theirs) and all(
            n == m and p.shape == q.shape and torch.equal(p, q) for (n, p), (m, q) in zip(mine, theirs)
        )

    @torch.no_grad()
    def hidden(self, model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The hidden state entering block `n_frozen`: (B, T) -> (B, T, H). The forward stops there."""
        from rlhf_edu.logprobs import position_ids_from_mask

        owner, name = _blocks_owner(model)
        block = getattr(owner, name)[self.n_frozen - 1]

        def stop(module, args, output):
            raise _TrunkReady(output[0] if isinstance(output, tuple) else output)

        handle = block.register_forward_hook(stop)
        try:
            model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask),
                use_cache=False,
            )
        except _TrunkReady as ready:
            return ready.hidden
        finally:
            handle.remove()
        raise RuntimeError(f"block {self.n_frozen - 1} never ran")

    @contextlib.contextmanager
    def top_blocks_only(self, model: torch.nn.Module):
        """Within the block, `model`'s block list is its top blocks only (restored afterwards)."""
        owner, name = _blocks_owner(model)
        blocks = getattr(owner, name)
        setattr(owner, name, torch.nn.ModuleList(list(blocks)[self.n_frozen :]))
        try:
            yield
        finally:
            setattr(owner, name, blocks)

    def logps(self, model, trunk, input_ids, attention_mask, context_length, temperature, return_hidden=False):
        """`per_token_logps` of `model` from the trunk: the top blocks, the norm and the LM head."""
        with self.top_blocks_only(model):
            return per_token_logps(
                model,
                input_ids,
                attention_mask,
                context_length,
                temperature,
                return_hidden=return_hidden,
                inputs_embeds=trunk,
            )

    @torch.no_grad()
    def check(self, model, input_ids, attention_mask, context_length, temperature, atol: float = 1e-4) -> float:
        """Largest |difference| between full-forward and trunk log-probs (and last hidden states) on a
        batch; past `atol` the trunk is switched off (so a run never relies on an inexact shortcut)."""
        if not self.enabled:
            return 0.0
        full, full_hidden = per_token_logps(
            model, input_ids, attention_mask, context_length, temperature, return_hidden=True
        )
        trunk = self.hidden(model, input_ids, attention_mask)
        fast, fast_hidden = self.logps(
            model, trunk, input_ids, attention_mask, context_length, temperature, return_hidden=True
        )
        gap = max(float((full - fast).abs().max()), float((full_hidden - fast_hidden).abs().max()))
        if gap > atol:
            self.enabled = self.shared_with_reference = False
            self.reason = f"full forwards (the trunk path differed by {gap:.1e} from a full forward)"
        return gap
