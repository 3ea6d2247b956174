"""Any policy of this repo inside RLinf (`pip install rlinf==0.3.0`, https://github.com/RLinf/RLinf): registered as
an RLinf embodied model, so RLinf's rollout and actor workers sample, score and train it with RLinf's own
advantages (GAE, GRPO) and losses.

Registration (rlinf/models/__init__.py: `register_model(model_type, builder, category="embodied")`; every Ray
worker imports `RLINF_EXT_MODULE` and calls its `register()`, rlinf/scheduler/cluster/utils.py
`load_user_extension_module`):

    export RLINF_EXT_MODULE=adapters.rlinf          # this module's register() runs in every worker
    actor.model.model_type=load_policy actor.model.model_path=<checkpoint or run dir> actor.model.precision=fp32

The model (rlinf/models/embodiment/base_policy.py `BasePolicy`; the calls are those of
rlinf/workers/rollout/hf/huggingface_worker.py and rlinf/workers/actor/fsdp_actor_worker.py `train_micro_batch`):

    predict_action_batch(env_obs, mode)  -> actions (B, K, A) in environment units, and
                                            prev_logprobs (B, K, A), prev_values (B, 1), forward_inputs
    forward(forward_inputs=..., compute_logprobs, compute_entropy, compute_values)   (-> default_forward)
                                         -> logprobs (B, K, A), entropy (B, 1), values (B, 1)

Observations: RLinf's env_obs (rlinf/envs/metaworld/metaworld_env.py `_wrap_obs`, libero, maniskill, ...) maps onto
`common.policy`'s TensorDict: `main_images` (B, H, W, 3) uint8 -> rgb camera 0, `wrist_images` -> camera 1 (for a
policy with two cameras), `states` -> proprio, `task_descriptions` -> language.

Log-probabilities: our contract scores a whole chunk (one number per decision, `Policy.evaluate_actions`), which is
RLinf's `algorithm.logprob_type=chunk_level` (rlinf/algorithms/utils.py `preprocess_loss_inputs` sums the
(B, K, A) entries). The chunk's log-probability is handed over in equal shares over its K x A entries, so that sum
gives it back; `action_level` / `token_level` would need per-entry log-probabilities, which the contract does not
expose. Entropy likewise is the chunk's: use `algorithm.entropy_type=chunk_level`.

forward_inputs (what the rollout stores and the actor feeds back to `default_forward`) hold tensors only, as RLinf
stacks and shuffles them: the observation (`rgb`, `proprio`, the instruction as fixed-width UTF-8 bytes) and every
tensor of the policy's rollout TensorDict under `rollout.<name>` (its sample, a flow policy's denoising step, ...).

Our environments: `register()` also makes `env.train.env_type` / `env.eval.env_type` = "embodied_models_metaworld"
(ENV_TYPE) our Meta-World (adapters/rlinf_envs.py). RLinf's env types are a closed enum (rlinf/envs/__init__.py
`SupportedEnvType`) that three functions check, each imported by name where it is used; `register()` replaces those
names with the functions below, which answer for ENV_TYPE and hand every other type to RLinf's own:
    rlinf.workers.env.env_worker.get_env_cls       the class the env worker builds (env_worker.py:182, 194)
    rlinf.workers.env.env_worker.prepare_actions   its action conversion (env_worker.py:396, 469): ours as `metaworld`
    rlinf.config.validate_embodied_cfg             the driver's config check (config.py:1009-1016): ours as `metaworld`
RLinf imports RLINF_EXT_MODULE in its workers only (rlinf/scheduler/worker/worker.py:387), so a driver script calls
`adapters.rlinf.register()` itself before `validate_cfg` (which also looks up the model type).
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from rlinf.config import validate_embodied_cfg as rlinf_validate_embodied_cfg
from rlinf.envs import get_env_cls as rlinf_get_env_cls
from rlinf.envs.action_utils import prepare_actions as rlinf_prepare_actions
from rlinf.models import register_model
from rlinf.models.embodiment.base_policy import BasePolicy, ForwardType
from tensordict import NonTensorStack, TensorDict
from torch import nn

from common.policy import Policy, load_policy

from adapters.text import decode_text, encode_text

MODEL_TYPE = "load_policy"  # actor.model.model_type / rollout.model.model_type
ENV_TYPE = "embodied_models_metaworld"  # env.train.env_type / env.eval.env_type: adapters/rlinf_envs.py
CAMERAS = ("main_images", "wrist_images", "extra_view_images")  # RLinf's env_obs images, our cameras in this order


class RLinfPolicy(nn.Module, BasePolicy):
    """A `common.policy.Policy` as an RLinf embodied model (an `nn.Module` that FSDP wraps, and a `BasePolicy`)."""

    def __init__(self, policy: Policy):
        super().__init__()
        if not hasattr(policy.cfg, "cameras"):  # the driving VLA reads a BEV raster and a route, not env_obs images
            raise ValueError(f"{type(policy).__name__} reads no cameras: RLinf's env_obs maps onto camera policies")
        self.policy = policy
        self.num_cameras = len(policy.cfg.cameras)

    def forward(self, forward_type: ForwardType = ForwardType.DEFAULT, **kwargs) -> dict[str, torch.Tensor]:
        """RLinf's dispatch (`BasePolicy.forward`: DEFAULT -> `default_forward`); `nn.Module` comes first in the
        bases, so its unimplemented `forward` would shadow it."""
        return BasePolicy.forward(self, forward_type, **kwargs)

    def _device(self) -> torch.device:
        return next(self.policy.parameters()).device

    def observations(self, env_obs: dict) -> TensorDict:
        """RLinf's env_obs as `common.policy`'s observation TensorDict."""
        device = self._device()
        missing = [key for key in CAMERAS[: self.num_cameras] if env_obs.get(key) is None]
        if missing:
            raise KeyError(f"the policy reads {self.num_cameras} camera(s): env_obs has no {missing}")
        rgb = torch.stack([torch.as_tensor(env_obs[key]) for key in CAMERAS[: self.num_cameras]], dim=1)
        return TensorDict(rgb=rgb.to(device), proprio=torch.as_tensor(env_obs["states"]).float().to(device),
                          language=NonTensorStack(*env_obs["task_descriptions"]), batch_size=[len(rgb)],
                          device=device)

    @torch.no_grad()
    def predict_action_batch(self, env_obs: dict, mode: str = "train", do_sample: bool = True,
                             **kwargs) -> tuple[torch.Tensor, dict]:
        """One chunk per env: sampled from the policy's RL distribution, or its mean / ODE solution when
        `mode="eval"` or `do_sample=False`. RLinf's rollout worker (`MultiStepRolloutWorker.predict`) passes `mode` only
        to its own model types; ours get `rollout.sampling_params`, whose `do_sample` is False for evaluation when
        `temperature_eval <= 0`. Its other sampling options (temperature, top_k, ...) do not apply here."""
        obs = self.observations(env_obs)
        out = self.policy(obs, deterministic=mode == "eval" or not do_sample)
        actions = out["action"]
        b, k, a = actions.shape
        forward_inputs = dict(rgb=obs["rgb"], proprio=obs["proprio"],
                              language=encode_text(list(obs["language"])).to(actions.device),
                              action=actions.reshape(b, -1))  # RLinf's name for the executed chunk
        forward_inputs.update({f"rollout.{name}": value for name, value in out.items()
                               if name not in ("log_prob", "value")})
        return actions, dict(prev_logprobs=self._entries(out["log_prob"], k, a), prev_values=out["value"].float(),
                             forward_inputs=forward_inputs)

    @staticmethod
    def _entries(log_prob: torch.Tensor, k: int, a: int) -> torch.Tensor:
        """The chunk's log-probability (B,) in equal shares over its (B, K, A) entries (RLinf sums them back)."""
        return (log_prob.float() / (k * a))[:, None, None].expand(-1, k, a).contiguous()

    def default_forward(self, forward_inputs: dict, compute_logprobs: bool = True, compute_entropy: bool = False,
                        compute_values: bool = False, **kwargs) -> dict[str, torch.Tensor]:
        """The stored chunks re-scored under the current weights (`Policy.evaluate_actions`), with gradients.
        `kwargs`: RLinf's extras (`use_cache`, ...), unused here."""
        obs = TensorDict(rgb=forward_inputs["rgb"], proprio=forward_inputs["proprio"],
                         language=NonTensorStack(*decode_text(forward_inputs["language"])),
                         batch_size=[len(forward_inputs["rgb"])])
        b = len(forward_inputs["rgb"])
        rollout = TensorDict({name.removeprefix("rollout."): value for name, value in forward_inputs.items()
                              if name.startswith("rollout.")}, batch_size=[b])
        k, a = rollout["action"].shape[1:]
        out = {}
        if compute_logprobs or compute_entropy:
            log_prob, entropy = self.policy.evaluate_actions(obs, rollout)
            if compute_logprobs:
                out["logprobs"] = self._entries(log_prob, k, a)
            if compute_entropy:
                out["entropy"] = entropy.float()[:, None]
        if compute_values:
            out["values"] = self.policy.get_value(obs).float()
        return out


def build(cfg: DictConfig, torch_dtype: torch.dtype | None) -> RLinfPolicy:
    """RLinf's model builder: `cfg.model_path` is any checkpoint `common.policy.load_policy` reads."""
    if torch_dtype not in (None, torch.float32):
        raise ValueError(f"the adapter runs our policies in float32 (precision=fp32); got {torch_dtype}")
    return RLinfPolicy(load_policy(cfg.model_path))


def get_env_cls(env_type: str, env_cfg=None) -> type:
    """RLinf's env class lookup, plus ENV_TYPE (imported here: only env workers need MuJoCo)."""
    if env_type == ENV_TYPE:
        from adapters.rlinf_envs import RLinfMetaWorldEnv
        return RLinfMetaWorldEnv
    return rlinf_get_env_cls(env_type, env_cfg)


def prepare_actions(raw_chunk_actions, env_type: str, *args, **kwargs):
    """RLinf's conversion of a model's chunk into env actions, ENV_TYPE converted as RLinf's `metaworld` (to numpy;
    an OpenVLA model's 7-D actions cut to Meta-World's 4)."""
    return rlinf_prepare_actions(raw_chunk_actions, "metaworld" if env_type == ENV_TYPE else env_type, *args, **kwargs)


def validate_embodied_cfg(cfg: DictConfig) -> DictConfig:
    """RLinf's embodied config check, with ENV_TYPE checked as `metaworld` (it only asks the enum for the type)."""
    ours = [split for split in ("train", "eval")
            if cfg.env.get(split) is not None and cfg.env[split].env_type == ENV_TYPE]
    for split in ours:
        cfg.env[split].env_type = "metaworld"
    try:
        return rlinf_validate_embodied_cfg(cfg)
    finally:
        for split in ours:
            cfg.env[split].env_type = ENV_TYPE


def register(model_type: str = MODEL_TYPE) -> None:
    """What `RLINF_EXT_MODULE=adapters.rlinf` runs in every RLinf worker (force: a worker may import it twice): our
    model type, and ENV_TYPE where RLinf looks env types up (the module docstring)."""
    import rlinf.config
    from rlinf.workers.env import env_worker
    register_model(model_type, build, category="embodied", force=True)
    env_worker.get_env_cls, env_worker.prepare_actions = get_env_cls, prepare_actions
    rlinf.config.validate_embodied_cfg = validate_embodied_cfg
