"""Any policy of this repo in AReaL's roles (https://github.com/inclusionAI/AReaL), written against areal 1.0.4's
wheel (read, not installed: it needs `torch>=2.9.1,<2.11`, `transformers>=5.0.0,<=5.3.0`, `omegaconf==2.4.0.dev2`,
`hydra-core==1.4.0.dev1`, `networkx==3.3`, ... beside our torch 2.14.1 / transformers 5.23 / omegaconf 2.3.0).

AReaL trains with three pieces, all on padded dicts of tensors, a row a trajectory (areal/api/engine_api.py,
areal/api/workflow_api.py, areal/trainer/ppo/actor.py):

    RolloutWorkflow.arun_episode(engine, data) -> dict of (1, L) tensors: input_ids, attention_mask, loss_mask,
                               logprobs (the inference engine's, at each token's own position), rewards (1,)
    TrainEngine.forward(input_, output_seqlens, aggregate_fn) -> (B, L) log-probs, position i scoring token i + 1
    TrainEngine.train_batch(input_, loss_fn, loss_weight_fn) -> stats; loss_fn(logprobs, entropy, input_data) per
                               micro-batch, scaled by loss_weight_fn(mb) / total weight, then one optimizer step
    PPOActor.compute_logp / compute_advantages / ppo_update   (engine.eval(), engine.forward, engine.train(),
                               engine.train_batch with `grpo_loss_fn`, loss_weight_fn = loss_mask.count_nonzero())

An episode maps onto a trajectory as a response maps onto its prompt: position 0 is the episode's start (a prompt
token, loss_mask 0) and position t = 1..T holds chunk t - 1 (loss_mask 1) with the observation it was chosen on, so
AReaL's own shift (`torch.roll(..., -1)` of `logprobs` and `loss_mask` in `PPOActor._compute_advantages`) lines each
chunk up with the engine's output at the position before it, and its scalar `rewards` (the episode's outcome) lands
on the last chunk (`seqlens - 2`). `input_ids` holds the position index (AReaL reads its shape only; a VLA has no
tokens). The observations travel as tensors (split by rows into micro-batches): `rgb` (1, L, V, S, S, 3),
`proprio` (1, L, D), `language` as (1, 256) UTF-8 bytes, and the policy's rollout record as `rollout.<name>`.

`VLATrainEngine` implements the part of `TrainEngine` that `PPOActor` calls (`train`, `eval`, `forward`,
`train_batch`, `get_version` / `set_version`), in-process on one device; the rest of that ABC (process groups,
`save` / `load`, `update_weights` to an inference server, `rollout_batch`) is AReaL's distributed plumbing and is
not written here. `VLAInferenceEngine` serves the policy to the workflow as AReaL's inference engine serves a
language model (`agenerate`), with observations for requests.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import torch
from tensordict import NonTensorStack, TensorDict

from common.policy import Policy

from adapters.text import decode_text, encode_text

try:  # the workflow is an AReaL RolloutWorkflow where AReaL is installed (its only abstract method: arun_episode)
    from areal.api.workflow_api import RolloutWorkflow
except ImportError:
    RolloutWorkflow = object

class VLAInferenceEngine:
    """The rollout side: `agenerate(obs)` answers one chunk (the policy's `forward`, no gradients), as AReaL's
    `InferenceEngine.agenerate(ModelRequest)` answers tokens with their log-probs; `version` counts weight syncs."""

    def __init__(self, policy: Policy):
        self.policy, self.version = policy, 0

    async def agenerate(self, obs: TensorDict) -> TensorDict:
        with torch.no_grad():
            return self.policy(obs)

    def set_version(self, version: int) -> None:
        self.version = version

    def get_version(self) -> int:
        return self.version


class EpisodeEnv(Protocol):
    """One environment: `reset()` -> observation TensorDict of batch [1]; `step(chunk (1, K, A))` ->
    (observation, reward, done)."""

    def reset(self) -> TensorDict: ...

    def step(self, chunk: torch.Tensor) -> tuple[TensorDict, float, bool]: ...


class VLAWorkflow(RolloutWorkflow):
    """AReaL's `RolloutWorkflow`: `arun_episode(engine, data)` runs one episode of `make_env(data)` for at most
    `max_chunks` chunks and returns it as one trajectory row (the layout above); `rewards` is the episode's return."""

    def __init__(self, make_env: Callable[[dict[str, Any]], EpisodeEnv], max_chunks: int):
        self.make_env, self.max_chunks = make_env, max_chunks

    async def arun_episode(self, engine: VLAInferenceEngine, data: dict[str, Any]) -> dict[str, torch.Tensor]:
        env = self.make_env(data)
        obs, steps, total = env.reset(), [], 0.0
        for _ in range(self.max_chunks):
            out = await engine.agenerate(obs)
            steps.append((obs, out))
            obs, reward, done = env.step(out["action"])
            total += reward
            if done:
                break
        return trajectory(steps, total, engine.get_version())


def trajectory(steps: list[tuple[TensorDict, TensorDict]], reward: float, version: int) -> dict[str, torch.Tensor]:
    """T (observation, policy output) pairs of one env as a (1, T + 1) trajectory row; position 0 repeats the first
    observation as the episode's start (a prompt position: loss_mask 0, logprob 0)."""
    obs = torch.stack([o for o, _ in steps[:1] + steps], dim=1)  # (1, T + 1)
    records = torch.stack([out for _, out in steps[:1] + steps], dim=1)
    length = len(steps) + 1
    row = dict(input_ids=torch.arange(length)[None], attention_mask=torch.ones(1, length, dtype=torch.bool),
               loss_mask=torch.ones(1, length, dtype=torch.bool), rgb=obs["rgb"], proprio=obs["proprio"],
               language=encode_text(list(steps[0][0]["language"])), rewards=torch.tensor([float(reward)]),
               versions=torch.full((1, length), version))
    row["loss_mask"][:, 0] = False
    row["logprobs"] = records["log_prob"].float() * row["loss_mask"]
    row.update({f"rollout.{name}": value for name, value in records.items() if name not in ("log_prob", "value")})
    return row


class VLATrainEngine:
    """The training side of `PPOActor`: `forward` re-scores every stored chunk (`Policy.evaluate_actions`) and
    returns its log-prob one position earlier (AReaL's next-token alignment); `train_batch` splits `input_` into
    micro-batches of `micro_batch_size` rows, calls `loss_fn(logprobs, entropy, mb)` on each, weights it by
    `loss_weight_fn(mb) / total`, and takes one step of `optimizer` (gradient norm clipped at `max_grad_norm`)."""

    def __init__(self, policy: Policy, optimizer: torch.optim.Optimizer, micro_batch_size: int = 8,
                 max_grad_norm: float = 1.0):
        self.policy, self.optimizer = policy, optimizer
        self.micro_batch_size, self.max_grad_norm = micro_batch_size, max_grad_norm
        self.version = 0

    def train(self, mode: bool = True) -> "VLATrainEngine":
        self.policy.train(mode)
        return self

    def eval(self) -> "VLATrainEngine":
        return self.train(False)

    def set_version(self, version: int) -> None:
        self.version = version

    def get_version(self) -> int:
        return self.version

    def _score(self, data: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-prob, entropy), each (B, L): position i holds those of the chunk at position i + 1 (0 at the end)."""
        b, length = data["input_ids"].shape
        language = [text for text in decode_text(data["language"]) for _ in range(length)]
        obs = TensorDict(rgb=data["rgb"].flatten(0, 1), proprio=data["proprio"].flatten(0, 1),
                         language=NonTensorStack(*language), batch_size=[b * length])
        rollout = TensorDict({key.removeprefix("rollout."): value.flatten(0, 1) for key, value in data.items()
                              if key.startswith("rollout.")}, batch_size=[b * length])
        log_prob, entropy = (x.view(b, length) for x in self.policy.evaluate_actions(obs, rollout))
        shift = torch.zeros(b, 1, dtype=log_prob.dtype, device=log_prob.device)
        return torch.cat([log_prob[:, 1:], shift], 1), torch.cat([entropy[:, 1:], shift], 1)

    @torch.no_grad()
    def forward(self, input_: dict[str, Any], output_seqlens: list[int] | None = None,
                aggregate_fn: Callable[[list[torch.Tensor]], torch.Tensor] = torch.cat) -> torch.Tensor:
        """`TrainEngine.forward`: the (B, L) log-probs. As AReaL's engines do, each micro-batch's output is packed
        to 1D, `aggregate_fn` joins them (PPOActor passes a cat on the last dim) and the result is padded back."""
        packed = aggregate_fn([self._score(mb)[0].flatten() for mb in self._micro_batches(input_)])
        return packed.view(input_["input_ids"].shape)

    def train_batch(self, input_: dict[str, Any], loss_fn: Callable[..., torch.Tensor],
                    loss_weight_fn: Callable[[dict[str, Any]], torch.Tensor]) -> dict[str, float]:
        micro_batches = self._micro_batches(input_)
        total = sum(float(loss_weight_fn(mb)) for mb in micro_batches)
        self.optimizer.zero_grad()
        losses = []
        for mb in micro_batches:
            log_prob, entropy = self._score(mb)
            loss = loss_fn(log_prob, entropy, mb)
            (loss * float(loss_weight_fn(mb)) / total).backward()
            losses.append(loss.item() * float(loss_weight_fn(mb)) / total)
        parameters = [p for p in self.policy.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, self.max_grad_norm)
        self.optimizer.step()
        return dict(loss=sum(losses), grad_norm=grad_norm.item(), lr=self.optimizer.param_groups[0]["lr"])

    def _micro_batches(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        rows = data["input_ids"].shape[0]
        return [{key: value[start:start + self.micro_batch_size] if torch.is_tensor(value) else value
                 for key, value in data.items()} for start in range(0, rows, self.micro_batch_size)]
