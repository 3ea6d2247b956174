"""The one contract every method's policy meets — for inference, for evaluation and for online RL — and the loader
that builds any method's policy from its checkpoint alone.

Observations are a `tensordict.TensorDict` of batch size [B] (EmbodiChain's convention):

    rgb       uint8 (B, V, S, S, 3)  the policy's V cameras, in the order of its config's `cameras`
    proprio   float (B, D)           the state the policy reads (its config's `state_key`: 4-D proprioception by
                                     default, the privileged 39-D state in the oracle rows)
    language  B strings              the instruction (a non-tensor entry)

A key a policy does not read may be missing (OpenVLA reads no proprio); a key it reads being missing is an error
that names it. `observations()` builds this from environment observations.

The contract (`Policy`), in EmbodiChain's words:

    predict(obs)                   -> (B, H, A) action chunk in environment units, the policy as trained
    forward(obs)                   -> TensorDict: `action` (B, K, A) the K actions to execute, sampled from the
                                      policy's RL distribution; `log_prob` (B,), `value` (B, 1), and whatever
                                      `evaluate_actions` needs to recompute the log-probability (the sample in
                                      normalised units, a flow policy's denoising chain, ...)
    get_value(obs)                 -> (B, 1)
    evaluate_actions(obs, rollout) -> (log_prob (B,), entropy (B,)) of `rollout` (what `forward` returned) under
                                      the current weights: before any update it equals the rollout's `log_prob`

plus `deterministic` in `forward` (the mean / the ODE solution: evaluation). The log-probability is the chunk's:
one number per decision, as chunk-level PPO uses it.

    load_policy(path)     a checkpoint directory, a run directory or its `checkpoints/last` pointer; the method's
                          name is in the checkpoint's config.json, its folder registers a builder with
                          `@register_policy(name)` in `<method>/policy.py`, which `load_policy` imports by name.

A Protocol and a dict, nothing deeper: a method meets the contract by having these methods, not by subclassing.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from safetensors import safe_open
from tensordict import NonTensorStack, TensorDict

from common.train import load_pretrained, read_config, resolve_checkpoint


@runtime_checkable
class Policy(Protocol):
    cfg: Any  # the method's config: its cameras, state_key, demo_image_size, ... (what observations it reads)

    def predict(self, obs: TensorDict) -> torch.Tensor: ...

    def forward(self, obs: TensorDict, deterministic: bool = False) -> TensorDict: ...

    def get_value(self, obs: TensorDict) -> torch.Tensor: ...

    def evaluate_actions(self, obs: TensorDict, rollout: TensorDict) -> tuple[torch.Tensor, torch.Tensor]: ...


# --------------------------------------------------------------------------------------------------- observations
def observations(obs: Sequence[dict[str, Any]], cameras: Sequence[str], state_key: str = "observation.state",
                 device: str | torch.device = "cpu") -> TensorDict:
    """Environment observations (`MetaWorldEnv.observation()` dicts, one per env) as one TensorDict of batch [B].
    `state_key` picks `proprio`: "observation.state" (the 4-D proprioception) or "observation.environment_state"
    (the privileged 39-D state)."""
    state = {"observation.state": "state", "observation.environment_state": "env_state"}[state_key]
    missing = [c for c in cameras if c not in obs[0]["images"]]
    if missing:
        raise KeyError(f"the observation has no image from camera(s) {missing}; it has {list(obs[0]['images'])}")
    rgb = np.stack([np.stack([o["images"][c] for c in cameras]) for o in obs])
    proprio = np.stack([o[state] for o in obs]).astype(np.float32)
    return TensorDict({"rgb": torch.from_numpy(rgb), "proprio": torch.from_numpy(proprio),
                       "language": NonTensorStack(*(o["instruction"] for o in obs))},
                      batch_size=[len(obs)], device=device)


def language(obs: TensorDict) -> list[str]:
    """The instructions of a TensorDict of observations as a list of B strings."""
    if "language" not in obs.keys():
        raise KeyError("the policy reads an instruction: the observation has no 'language'")
    return list(obs["language"])


def feature_batch(obs: TensorDict, image_keys: Sequence[str], state_key: str | None) -> dict[str, Any]:
    """A TensorDict of observations under the dataset's feature names (what the methods' models read):
    `image_keys[i]` <- rgb[:, i], `state_key` <- proprio (None: the policy reads no state), `instruction`."""
    for key in ("rgb", *(("proprio",) if state_key else ())):
        if key not in obs.keys():
            raise KeyError(f"the policy reads {key!r}: the observation has only {sorted(obs.keys())}")
    rgb = obs["rgb"]
    if rgb.shape[1] != len(image_keys):
        raise ValueError(f"the policy reads {len(image_keys)} camera(s) {list(image_keys)}, the observation has "
                         f"{rgb.shape[1]}")
    batch = {key: rgb[:, i] for i, key in enumerate(image_keys)}
    if state_key:
        batch[state_key] = obs["proprio"]
    batch["instruction"] = language(obs)
    return batch


# ------------------------------------------------------------------------------------------- Gaussian heads
class GaussianChunkPolicy(torch.nn.Module):
    """The contract for a policy whose chunk is a Gaussian around a regression head (BC, OpenVLA-OFT):

        a ~ N(mu_theta(o), diag sigma^2) over the K executed actions, in the policy's normalised action units;
        sigma = exp(log_std), one learned log-std per action dimension (PPO's continuous-action policy)
        log pi(a | o) = sum over the K x A entries of log N;  H = its closed-form entropy, summed alike

    A subclass sets `policy` (the method's imitation policy: `predict_chunk`, `image_keys`, `normalizer`, `cfg`),
    `log_std`, `value_head`, `feature_dim`, and gives `distribution(obs)` -> (that Normal, the features it came
    from, detached: what the value head and SAC's critics read). The imitation policy stays in eval mode (no
    augmentation): the log-probability recomputed in an update must equal the rollout's before any step."""

    def train(self, mode: bool = True) -> "GaussianChunkPolicy":
        super().train(mode)
        self.policy.eval()
        return self

    def _batch(self, obs: TensorDict) -> dict[str, Any]:
        return feature_batch(obs, self.policy.image_keys, self.policy.cfg.state_key)

    @torch.no_grad()
    def predict(self, obs: TensorDict) -> torch.Tensor:
        """The whole chunk as trained (the mean), environment units: (B, H, A)."""
        return self.policy.predict_chunk(self._batch(obs))

    def forward(self, obs: TensorDict, deterministic: bool = False) -> TensorDict:
        gaussian, features = self.distribution(obs)
        sample = gaussian.mean if deterministic else gaussian.sample()
        return TensorDict(action=self.policy.normalizer.unnormalize("action", sample), sample=sample,
                          log_prob=gaussian.log_prob(sample).sum((1, 2)), value=self.value_head(features),
                          batch_size=[len(sample)])

    def get_value(self, obs: TensorDict) -> torch.Tensor:
        return self.value_head(self.distribution(obs)[1])

    def evaluate_actions(self, obs: TensorDict, rollout: TensorDict) -> tuple[torch.Tensor, torch.Tensor]:
        gaussian, _ = self.distribution(obs)
        return gaussian.log_prob(rollout["sample"]).sum((1, 2)), gaussian.entropy().sum((1, 2))


# --------------------------------------------------------------------------------------------------- Flow-SDE
def flow_sde_step(x: torch.Tensor, velocity: torch.Tensor, tau: torch.Tensor, delta: float, noise_level: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow-SDE (πRL, Chen et al. 2025, arXiv:2510.25889; RLinf's `flow_sde`): the Gaussian of one Euler–Maruyama
    step of the SDE whose marginals equal the flow ODE's, shared by the flow policies (π0/π0.5, GR00T).

    In openpi's time (x_τ = τ·ε + (1 − τ)·a, τ = 1 noise → τ = 0 action, v = ε − a), from x_τ to x_{τ−δ}:
        μ = x_τ − δ·v − (σ_τ²·δ / 2τ)·(x_τ + (1 − τ)·v),   s = √δ·σ_τ,   σ_τ = a·√(τ / (1 − τ))
    with 1 − τ read as δ at τ = 1 (the first step's σ is finite: s = a there). `tau` (B,) per sample; returns the
    mean (B, H, D) and the standard deviation (B, 1, 1). A policy in another time convention maps onto this one
    (GR00T: τ = 1 − t, v = −v_GR00T)."""
    tau = tau[:, None, None]
    sigma = noise_level * torch.sqrt(tau / (1 - torch.where(tau == 1, 1 - delta, tau)))
    mean = x - delta * velocity - (sigma ** 2 * delta / (2 * tau)) * (x + (1 - tau) * velocity)
    return mean, delta ** 0.5 * sigma


def flow_sde_score(mean: torch.Tensor, std: torch.Tensor, x_next: torch.Tensor,
                   executed: Callable = lambda x: x) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability (B,) of the stored step's x_{k+1} under its Gaussian N(mean, std^2), and the Gaussian's
    entropy (B,), both over the entries `executed(x)` selects."""
    gaussian = torch.distributions.Normal(executed(mean), std)
    return gaussian.log_prob(executed(x_next)).sum((1, 2)), gaussian.entropy().sum((1, 2))


def flow_sde_chain(noise: torch.Tensor, num_steps: int, chosen: int, euler_step: Callable, sde_step: Callable,
                   executed: Callable) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A flow policy's chunk with Flow-SDE's one stochastic step: `num_steps` steps from `noise`, step `chosen` drawn
    from the Gaussian `sde_step(x, step)` -> (mean, std), every other one `euler_step(x, step)` -> the next x
    (`chosen` = -1: the plain ODE). Returns the final x, the chosen step's x_k and x_{k+1} (zeros when none was
    chosen) and the log-probability (B,) of x_{k+1} over the entries `executed(x)` selects (the actions the robot
    runs; 0 when none was chosen)."""
    x, x_k, x_next = noise, torch.zeros_like(noise), torch.zeros_like(noise)
    log_prob = torch.zeros(noise.shape[0], device=noise.device)
    for step in range(num_steps):
        if step != chosen:
            x = euler_step(x, step)
            continue
        mean, std = sde_step(x, step)
        x_k, x = x, mean + std * torch.randn_like(x)
        x_next = x
        log_prob = flow_sde_score(mean, std, x_next, executed)[0]
    return x, x_k, x_next, log_prob


# --------------------------------------------------------------------------------------------------- the loader
def load_actor_critic_weights(actor_critic: torch.nn.Module, checkpoint: Path) -> torch.nn.Module:
    """Weights for an actor-critic that holds a method's imitation policy as `.policy`: all of them from an RL
    checkpoint (its tensors are named `policy.*`, `value_head.*`, ...), the imitation policy's alone from a training
    checkpoint (the RL parts keep their initial values)."""
    with safe_open(checkpoint / "model.safetensors", framework="pt") as f:
        is_rl = any(name.startswith("policy.") for name in f.keys())
    load_pretrained(actor_critic if is_rl else actor_critic.policy, checkpoint)
    return actor_critic

POLICIES: dict[str, Callable[[Path], Policy]] = {}


def register_policy(name: str) -> Callable:
    """`@register_policy("bc")` on a builder `checkpoint_dir -> Policy` in `bc/policy.py`."""
    def register(builder: Callable[[Path], Policy]) -> Callable[[Path], Policy]:
        POLICIES[name] = builder
        return builder
    return register


def load_policy(path: str | Path, method: str | None = None) -> Policy:
    """Any method's policy from its checkpoint alone. The method is the `method` entry of the checkpoint's
    config.json (`method` overrides it, for checkpoints written before the entry existed)."""
    checkpoint = resolve_checkpoint(path)
    meta = read_config(checkpoint)
    method = method or meta.get("method")
    if method is None:
        raise ValueError(f"{checkpoint}/config.json names no method; pass load_policy(..., method=<folder name>)")
    if method not in POLICIES:
        try:  # the method's folder registers its builder on import; `common` names no method folder itself
            importlib.import_module(f"{method}.policy")
        except ModuleNotFoundError as error:
            raise ValueError(f"unknown method {method!r}: no module {method}.policy ({error})") from error
    if method not in POLICIES:
        raise ValueError(f"{method}/policy.py registers no policy named {method!r}")
    return POLICIES[method](checkpoint)
