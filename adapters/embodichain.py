"""Any policy of this repo inside EmbodiChain (`pip install --no-deps embodichain==0.3.2`,
https://github.com/DexForce/EmbodiChain): a subclass of its RL policy base class, trained by its own PPO / GRPO
updates on a rollout in its layout.

EmbodiChain 0.3.2 has no `VLAPolicy` class (issue 19's name for it): its RL policy contract is the abstract
`embodichain.learning.rl.policies.Policy` (embodichain/learning/rl/policies/policy.py), an `nn.Module` whose
methods read and write a TensorDict, as its own `ActorCritic` (policies/actor_critic.py) implements them:

    forward(td, deterministic)  writes `action`, `sample_log_prob` (B,), `value` (B,) into td; returns td
    get_action(td, deterministic)   forward under no_grad (the base class; the collector calls it)
    get_value(td)               writes `value` (B,) into td; returns td
    evaluate_actions(td)        a new TensorDict: `sample_log_prob`, `entropy`, `value` (B,) and `action_mean`, the
                                log-probability of td's stored `action` under the current weights

Its PPO (embodichain/learning/rl/algo/ppo.py `PPO.update`) takes a rollout of batch size [num_envs, T + 1]
(`compute_gae` in algo/common.py: `value[:, -1]` is the bootstrap value of the last observation, transition fields
leave their last slot as padding), flattens it with `buffer/utils.py` `transition_view` (which keeps `obs`,
`action`, `sample_log_prob`, `value`, `reward`, `done`, `terminated`, `truncated` and the algorithm's fields),
normalises the advantages, and re-scores each minibatch with `evaluate_actions(batch)`. GRPO (algo/grpo.py) does
the same with group-normalised returns.

This adapter fills those keys with our contract (`common.policy.Policy`):

    obs      our observation TensorDict (`rgb`, `proprio`, `language`) as a nested TensorDict
    action   the policy's rollout TensorDict (what `forward` returned, less `log_prob` / `value`): the chunk to
             execute is `action["action"]` (B, K, A) in environment units, next to what `evaluate_actions` needs
             to re-score it (a Gaussian's sample, a flow policy's denoising step)

because `transition_view` carries only those keys through an update, and for a VLA the thing PPO re-scores is that
record, not the executed chunk alone (a flow policy's chunk has no closed-form density).

Not used: EmbodiChain's `SyncCollector` and `RolloutBuffer` (collector/sync_collector.py, buffer/standard_buffer.py),
which preallocate `obs` and `action` as flat float vectors (num_envs, T + 1, obs_dim / action_dim) from an MLP
policy's `obs_dim` / `action_dim`: images, instructions and a chunk's rollout record do not fit that layout, so
`rollout()` stacks the steps into EmbodiChain's [num_envs, T + 1] layout instead; its environments need its
`dexsim_engine` simulator (a declared requirement that is not installed here).
"""

from __future__ import annotations

from typing import Any

import torch
from embodichain.learning.rl.algo import build_algo
from embodichain.learning.rl.policies import Policy as EmbodiChainBase
from tensordict import TensorDict

from common.policy import Policy


class EmbodiChainPolicy(EmbodiChainBase):
    """A `common.policy.Policy` as an EmbodiChain RL policy (`embodichain.learning.rl.policies.Policy`)."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.policy = policy
        self.device = next(policy.parameters()).device

    def forward(self, tensordict: TensorDict, deterministic: bool = False) -> TensorDict:
        """`tensordict["obs"]` -> `action` (the rollout record, executed chunk under `action["action"]`),
        `sample_log_prob` (B,), `value` (B,), written into `tensordict` as `ActorCritic.forward` does."""
        out = self.policy(tensordict["obs"], deterministic=deterministic)
        tensordict["action"] = out.exclude("log_prob", "value")
        tensordict["sample_log_prob"] = out["log_prob"].float()
        tensordict["value"] = out["value"][:, 0].float()
        return tensordict

    def get_value(self, tensordict: TensorDict) -> TensorDict:
        tensordict["value"] = self.policy.get_value(tensordict["obs"])[:, 0].float()
        return tensordict

    def evaluate_actions(self, tensordict: TensorDict) -> TensorDict:
        """The stored `action` records re-scored under the current weights (`Policy.evaluate_actions`).

        `action_mean` is zeros (B, 1): PPO always computes its action-bound penalty from it
        (`PPO._action_bound_loss`), but our contract exposes no action mean (a flow policy's chunk has none in
        closed form), so `algorithm()` refuses `action_bound_coef > 0`; adaptive-KL PPO, which reads
        `action_mean` / `action_std` from the rollout, stops with EmbodiChain's own KeyError."""
        obs = tensordict["obs"]
        log_prob, entropy = self.policy.evaluate_actions(obs, tensordict["action"])
        value = self.policy.get_value(obs)[:, 0]
        n = tensordict.batch_size[0]
        return TensorDict(sample_log_prob=log_prob.float(), entropy=entropy.float(), value=value.float(),
                          action_mean=torch.zeros(n, 1, device=value.device), batch_size=[n], device=tensordict.device)


def algorithm(name: str, cfg: dict[str, Any], policy: EmbodiChainPolicy, device: str = "cpu"):
    """EmbodiChain's PPO or GRPO around `policy`, built by its own `build_algo(name, cfg_kwargs, policy, device)`
    (embodichain/learning/rl/algo/__init__.py; `cfg` holds `PPOCfg` / `GRPOCfg` fields, `optimizer` as a dict)."""
    if cfg.get("action_bound_coef", 0.0) > 0:
        raise ValueError("action_bound_coef > 0 penalises a Gaussian action mean, which our policies do not expose")
    return build_algo(name, cfg, policy, torch.device(device))


def rollout(policy: EmbodiChainPolicy, steps: list[TensorDict], last_obs: TensorDict, reward: torch.Tensor,
            terminated: torch.Tensor, truncated: torch.Tensor) -> TensorDict:
    """T steps of N envs (each the TensorDict `policy.get_action` filled: `obs`, `action`, `sample_log_prob`,
    `value`) and the observation after the last one, as EmbodiChain's rollout of batch size [N, T + 1]: `obs` of
    every step plus `last_obs`, `value` plus the bootstrap value of `last_obs` (`SyncCollector._attach_final_value`),
    transition fields (`action`, `sample_log_prob`, `reward`, `done`, `terminated`, `truncated`; the latter (N, T))
    with a zero pad in the last slot, as `RolloutBuffer` leaves it."""
    n, t = reward.shape
    last = policy.get_value(TensorDict(obs=last_obs, batch_size=[n]))

    def padded(values: torch.Tensor) -> torch.Tensor:
        return torch.cat([values, torch.zeros_like(values[:, :1])], dim=1)

    return TensorDict(
        obs=torch.stack([step["obs"] for step in steps] + [last_obs], dim=1),
        action=torch.stack([step["action"] for step in steps] + [torch.zeros_like(steps[-1]["action"])], dim=1),
        sample_log_prob=padded(torch.stack([step["sample_log_prob"] for step in steps], dim=1)),
        value=torch.stack([step["value"] for step in steps] + [last["value"]], dim=1),
        reward=padded(reward.float()), done=padded(terminated | truncated), terminated=padded(terminated),
        truncated=padded(truncated), batch_size=[n, t + 1])
