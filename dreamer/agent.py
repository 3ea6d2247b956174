"""DreamerV3's learning: the world-model loss, imagination, λ-returns, the actor and critic losses, one jitted update.

Reading order: `train_step` (one update of all three networks, in the paper's order), then `world_model_loss`
(Eq. 4–5), `imagine`, `lambda_returns` (Eq. 7), `ReturnNorm` (Eq. 8), `actor_loss` (Eq. 6/8) and `critic_loss`
(Eq. 10 with the slow-critic regulariser). Written by reading danijar/dreamerv3 @84ecf19 side
by side (`agent.py`, `behaviors.py`, `jaxutils.py`); `kl_losses`, `lambda_returns` and `update_return_norm` are
checked against danijar/dreamerv3's own functions at e3f0224 on fixed inputs (`tests/test_official_parity.py`); no
test compares the rest's outputs with it.

Data layout: batch-major arrays (B, T, ...) with `image` uint8, `action` (the action taken *after* observing step
t), `reward` (received on arriving at step t), `is_first`, `is_terminal`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax

from dreamer.config import DreamerConfig
from dreamer.networks import (Actor, Critic, WorldModel, categorical_kl, features, symlog, twohot_bins,
                              twohot_loss, twohot_mean)

sg = jax.lax.stop_gradient


@dataclass(frozen=True)
class Networks:
    """The three Flax modules and the constants the losses need (static under `jax.jit`)."""
    wm: WorldModel
    actor: Actor
    critic: Critic
    cfg: DreamerConfig
    action_dim: int
    discrete: bool
    vector_dim: int = 0  # > 0: state-vector observations (batch key "vector") instead of images ("image")

    @property
    def obs_key(self) -> str:
        return "vector" if self.vector_dim else "image"

    @property
    def bins(self) -> jax.Array:
        return twohot_bins(self.cfg.bins)

    @property
    def discount(self) -> float:
        return 1.0 - 1.0 / self.cfg.horizon  # γ = 0.997


def make_networks(cfg: DreamerConfig, action_dim: int, discrete: bool, vector_dim: int = 0) -> Networks:
    """`vector_dim` > 0 when `cfg.obs == "vector"`: the size of the environment's state vector."""
    if (cfg.obs == "vector") != (vector_dim > 0):
        raise ValueError(f"obs={cfg.obs!r} needs vector_dim > 0 exactly for vector observations, got {vector_dim}")
    wm = WorldModel(cfg.deter, cfg.units, cfg.layers, cfg.cnn_depth, cfg.stoch, cfg.classes, cfg.unimix, cfg.bins,
                    cfg.image_size, vector_dim)
    actor = Actor(cfg.layers, cfg.units, action_dim, discrete, cfg.unimix, cfg.min_std, cfg.max_std)
    return Networks(wm, actor, Critic(cfg.layers, cfg.units, cfg.bins), cfg, action_dim, discrete, vector_dim)


def make_optimizers(cfg: DreamerConfig) -> dict[str, optax.GradientTransformation]:
    """Adam with global-norm clipping: world model 1e-4 (clip 1000), actor and critic 3e-5 (clip 100)."""
    adam = lambda lr, eps, clip: optax.chain(optax.clip_by_global_norm(clip), optax.adam(lr, eps=eps))  # noqa: E731
    return dict(wm=adam(cfg.model_lr, cfg.model_eps, cfg.model_clip), actor=adam(cfg.actor_lr, cfg.ac_eps, cfg.ac_clip),
                critic=adam(cfg.critic_lr, cfg.ac_eps, cfg.ac_clip))


class ReturnNorm(NamedTuple):
    """EMAs of the 5th and 95th percentiles of the λ-returns (Eq. 8); S = max(1, high − low)."""
    low: jax.Array
    high: jax.Array


def update_return_norm(norm: ReturnNorm, returns: jax.Array, cfg: DreamerConfig) -> tuple[ReturnNorm, jax.Array]:
    """Update the percentile EMAs with a batch of returns (no bias correction, starting from 0 as the official
    code) and return the new state and the scale S = max(1, high − low)."""
    returns = sg(returns.astype(jnp.float32))
    low = cfg.retnorm_decay * norm.low + (1 - cfg.retnorm_decay) * jnp.percentile(returns, cfg.retnorm_low)
    high = cfg.retnorm_decay * norm.high + (1 - cfg.retnorm_decay) * jnp.percentile(returns, cfg.retnorm_high)
    return ReturnNorm(low, high), jnp.maximum(1.0, high - low)


@flax.struct.dataclass
class TrainState:
    """Everything an update reads and writes: parameters, optimiser states, the slow critic, the return
    normaliser and the update count. A pytree: checkpointed with `flax.serialization`."""
    wm: Any
    actor: Any
    critic: Any
    slow_critic: Any
    wm_opt: Any
    actor_opt: Any
    critic_opt: Any
    return_norm: ReturnNorm
    updates: jax.Array


def observation_shape(nets: Networks) -> tuple[int, ...]:
    return (nets.vector_dim,) if nets.vector_dim else (nets.cfg.image_size, nets.cfg.image_size, 3)


def init_state(nets: Networks, key: jax.Array) -> TrainState:
    cfg = nets.cfg
    k_wm, k_actor, k_critic, k_sample = jax.random.split(key, 4)
    obs = jnp.zeros((1, *observation_shape(nets)), jnp.float32 if nets.vector_dim else jnp.uint8)
    wm_vars = nets.wm.init(k_wm, obs, zero_state(cfg, 1), jnp.zeros((1, nets.action_dim)),
                           jnp.ones((1,), bool), k_sample)
    feat = jnp.zeros((1, cfg.deter + cfg.stoch * cfg.classes))
    actor, critic = nets.actor.init(k_actor, feat)["params"], nets.critic.init(k_critic, feat)["params"]
    opts = make_optimizers(cfg)
    return TrainState(wm=wm_vars["params"], actor=actor, critic=critic, slow_critic=jax.tree.map(jnp.copy, critic),
                      wm_opt=opts["wm"].init(wm_vars["params"]), actor_opt=opts["actor"].init(actor),
                      critic_opt=opts["critic"].init(critic), return_norm=ReturnNorm(jnp.zeros(()), jnp.zeros(())),
                      updates=jnp.zeros((), jnp.int32))


def zero_state(cfg: DreamerConfig, batch: int) -> dict:
    """An all-zero RSSM state; where `is_first` is set, `obs_step` replaces it by the learned initial state."""
    return dict(deter=jnp.zeros((batch, cfg.deter)), stoch=jnp.zeros((batch, cfg.stoch, cfg.classes)),
                logits=jnp.zeros((batch, cfg.stoch, cfg.classes)))


# ------------------------------------------------------------------------------------------------- world model
def observe(nets: Networks, params, data: dict, key: jax.Array) -> tuple[dict, dict]:
    """Filter a batch of sequences through the RSSM: posteriors and priors (B, T, ...). Every sequence starts at
    its first step (`is_first` is set there), so the initial state needs no carry between batches."""
    b, t = data["action"].shape[:2]
    embed = nets.wm.apply({"params": params}, data[nets.obs_key], method=WorldModel.encode)
    prev_action = jnp.concatenate([jnp.zeros_like(data["action"][:, :1]), data["action"][:, :-1]], 1)
    is_first = jnp.asarray(data["is_first"]).at[:, 0].set(True)
    time_major = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731  (scan runs over the leading axis)

    def step(state, inputs):
        action, emb, first, k = inputs
        post, prior = nets.wm.apply({"params": params}, state, action, emb, first, k, method=WorldModel.obs_step)
        return post, (post, prior)

    inputs = (time_major(prev_action), time_major(embed), time_major(is_first), jax.random.split(key, t))
    _, (post, prior) = jax.lax.scan(step, zero_state(nets.cfg, b), inputs)
    return jax.tree.map(time_major, post), jax.tree.map(time_major, prior)


def kl_losses(post: dict, prior: dict, free_nats: float) -> tuple[jax.Array, jax.Array]:
    """KL balancing with free bits (Eq. 5): L_dyn = max(1, KL(sg(q) ‖ p)) trains the prior towards the posterior,
    L_rep = max(1, KL(q ‖ sg(p))) the representation towards the prior; summed over the latents, clipped per
    step."""
    dyn = categorical_kl(sg(post["logits"]), prior["logits"])
    rep = categorical_kl(post["logits"], sg(prior["logits"]))
    return jnp.maximum(free_nats, dyn), jnp.maximum(free_nats, rep)


def world_model_loss(params, nets: Networks, data: dict, key: jax.Array):
    """L(φ) = E[Σ_t β_pred L_pred + β_dyn L_dyn + β_rep L_rep] (Eq. 4–5), per step then averaged over B and T.
    L_pred: image MSE summed over pixels (or, for a state vector, the squared error against symlog(x) summed over
    its entries), reward two-hot cross-entropy, continue Bernoulli log-loss."""
    cfg = nets.cfg
    post, prior = observe(nets, params, data, key)
    decoded, reward_logits, cont_logit = nets.wm.apply({"params": params}, features(post), method=WorldModel.heads)
    if nets.vector_dim:
        obs_loss = cfg.scale_vector * ((decoded - symlog(data["vector"])) ** 2).sum(-1)
    else:
        obs_loss = cfg.scale_image * ((decoded - data["image"].astype(jnp.float32) / 255.0) ** 2).sum((-3, -2, -1))
    reward_loss = twohot_loss(reward_logits, data["reward"], nets.bins)
    cont_loss = optax.sigmoid_binary_cross_entropy(cont_logit, 1.0 - data["is_terminal"].astype(jnp.float32))
    dyn, rep = kl_losses(post, prior, cfg.free_nats)
    loss = (obs_loss + cfg.scale_reward * reward_loss + cfg.scale_cont * cont_loss
            + cfg.scale_dyn * dyn + cfg.scale_rep * rep).mean()
    metrics = {f"{nets.obs_key}_loss": obs_loss.mean(), "reward_loss": reward_loss.mean(),
               "cont_loss": cont_loss.mean(), "dyn_loss": dyn.mean(), "rep_loss": rep.mean(), "wm_loss": loss}
    return loss, (post, metrics)


# --------------------------------------------------------------------------------------------------- behaviour
def sample_action(nets: Networks, actor_params, feat: jax.Array, key: jax.Array) -> jax.Array:
    """a ~ π(a | s): reparameterised for continuous actions, straight-through one-hot for discrete ones."""
    out, std = nets.actor.apply({"params": actor_params}, feat)
    if nets.discrete:
        return jax.nn.one_hot(jax.random.categorical(key, out), nets.action_dim)
    return out + std * jax.random.normal(key, out.shape)


def action_log_prob_and_entropy(nets: Networks, actor_params, feat: jax.Array, action: jax.Array):
    out, std = nets.actor.apply({"params": actor_params}, feat)
    if nets.discrete:
        log_probs = jax.nn.log_softmax(out, -1)
        return (action * log_probs).sum(-1), -(jnp.exp(log_probs) * log_probs).sum(-1)
    log_prob = jax.scipy.stats.norm.logpdf(action, out, std).sum(-1)
    return log_prob, (0.5 * jnp.log(2 * jnp.pi * jnp.e * std ** 2)).sum(-1)


def imagine(nets: Networks, wm_params, actor_params, start: dict, key: jax.Array) -> tuple[dict, jax.Array]:
    """Roll the prior forward `imag_horizon` steps from every start state, acting with the actor on sg(s):
    H + 1 states and actions (time-major: (H + 1, N, ...)). Gradients reach the actor through the actions
    (continuous: the dynamics are differentiated) but never the world-model parameters (not updated here)."""
    keys = jax.random.split(key, nets.cfg.imag_horizon + 1)
    action0 = sample_action(nets, actor_params, sg(features(start)), keys[0])

    def step(carry, k):
        state, action = carry
        k_img, k_act = jax.random.split(k)
        state = nets.wm.apply({"params": wm_params}, state, action, k_img, method=WorldModel.img_step)
        action = sample_action(nets, actor_params, sg(features(state)), k_act)
        return (state, action), (state, action)

    _, (states, actions) = jax.lax.scan(step, (start, action0), keys[1:])
    states = jax.tree.map(lambda s, x: jnp.concatenate([s[None], x]), start, states)
    return states, jnp.concatenate([action0[None], actions])


def lambda_returns(reward: jax.Array, cont: jax.Array, value: jax.Array, discount: float, lam: float) -> jax.Array:
    """λ-returns (Eq. 7), time-major, for states 0..H−1 of an imagined trajectory of H + 1 states:
    R_H = v_H;  R_t = r_{t+1} + γ c_{t+1} ((1 − λ) v_{t+1} + λ R_{t+1}).
    `reward`, `cont`: (H, ...) for states 1..H; `value`: (H + 1, ...). Returns (H, ...)."""
    disc = discount * cont
    interm = reward + disc * (1 - lam) * value[1:]

    def step(next_return, inputs):
        x, d = inputs
        ret = x + d * lam * next_return
        return ret, ret

    _, returns = jax.lax.scan(step, value[-1], (interm, disc), reverse=True)
    return returns


def actor_loss(actor_params, nets: Networks, wm_params, critic_params, start: dict, start_cont: jax.Array,
               return_norm: ReturnNorm, key: jax.Array):
    """L(θ) = −Σ_t sg(w_t) [adv_t (backprop) or log π(a_t | s_t) sg(adv_t) (REINFORCE) + η H[π(· | s_t)]],
    adv_t = (R_t − v(s_t)) / max(1, S) (Eq. 6 and 8); w_t = Π_{i ≤ t} γ c_i / γ down-weights steps after a
    predicted episode end."""
    cfg = nets.cfg
    states, actions = imagine(nets, wm_params, actor_params, start, key)
    feat = features(states)  # (H + 1, N, F)
    reward_logits, cont_logit = nets.wm.apply({"params": wm_params}, feat, method=WorldModel.reward_and_cont)
    reward = twohot_mean(reward_logits, nets.bins)[1:]
    cont = (cont_logit > 0).astype(jnp.float32).at[0].set(start_cont)  # the head's mode; the real flag at t = 0
    value = twohot_mean(nets.critic.apply({"params": critic_params}, feat), nets.bins)
    returns = lambda_returns(reward, cont[1:], value, nets.discount, cfg.return_lambda)
    weight = sg(jnp.cumprod(nets.discount * cont, 0) / nets.discount)[:-1]
    return_norm, scale = update_return_norm(return_norm, returns, cfg)
    advantage = (returns - value[:-1]) / scale
    log_prob, entropy = action_log_prob_and_entropy(nets, actor_params, sg(feat[:-1]), sg(actions[:-1]))
    reinforce = nets.discrete or cfg.actor_grad_cont == "reinforce"
    objective = sg(advantage) * log_prob if reinforce else advantage
    loss = -(weight * (objective + cfg.actent * entropy)).mean()
    aux = dict(feat=sg(feat[:-1]), returns=sg(returns), weight=weight, return_norm=return_norm)
    metrics = dict(actor_loss=loss, entropy=entropy.mean(), imag_return=returns.mean(), return_scale=scale,
                   imag_reward=reward.mean())
    return loss, (aux, metrics)


def critic_loss(critic_params, nets: Networks, slow_critic_params, feat: jax.Array, returns: jax.Array,
                weight: jax.Array):
    """−log p_ψ(sg(R_t) | s_t) − β_slow log p_ψ(sg(v_slow(s_t)) | s_t), both two-hot, weighted by w_t (Sec. 3;
    the slow critic is an EMA of the critic)."""
    logits = nets.critic.apply({"params": critic_params}, feat)
    slow = twohot_mean(nets.critic.apply({"params": slow_critic_params}, feat), nets.bins)
    loss = twohot_loss(logits, returns, nets.bins) + nets.cfg.scale_slowreg * twohot_loss(logits, sg(slow), nets.bins)
    return (weight * loss).mean(), dict(critic_loss=(weight * loss).mean(),
                                        value=twohot_mean(logits, nets.bins).mean())


# ------------------------------------------------------------------------------------------------------- update
def train_step(nets: Networks, state: TrainState, data: dict, key: jax.Array) -> tuple[TrainState, dict]:
    """One update, in the official order: the world model on the replayed batch; then, from every posterior state
    of that batch (B·T starts, computed before the update) and with the updated world model, imagination, the actor
    update and the critic update on the same imagined trajectories; then the slow critic's EMA step.
    Jit it with `nets` closed over: `jax.jit(functools.partial(train_step, nets))`."""
    opts = make_optimizers(nets.cfg)
    k_wm, k_actor = jax.random.split(key)
    (_, (post, wm_metrics)), grads = jax.value_and_grad(world_model_loss, has_aux=True)(state.wm, nets, data, k_wm)
    updates, wm_opt = opts["wm"].update(grads, state.wm_opt, state.wm)
    wm = optax.apply_updates(state.wm, updates)

    flat = lambda x: sg(x.reshape(-1, *x.shape[2:]))  # noqa: E731  (B, T, ...) → (B·T, ...)
    start = {k: flat(v) for k, v in post.items()}
    start_cont = flat(1.0 - data["is_terminal"].astype(jnp.float32))
    (_, (aux, actor_metrics)), grads = jax.value_and_grad(actor_loss, has_aux=True)(
        state.actor, nets, wm, state.critic, start, start_cont, state.return_norm, k_actor)
    updates, actor_opt = opts["actor"].update(grads, state.actor_opt, state.actor)
    actor = optax.apply_updates(state.actor, updates)

    (_, critic_metrics), grads = jax.value_and_grad(critic_loss, has_aux=True)(
        state.critic, nets, state.slow_critic, aux["feat"], aux["returns"], aux["weight"])
    updates, critic_opt = opts["critic"].update(grads, state.critic_opt, state.critic)
    critic = optax.apply_updates(state.critic, updates)
    fraction = nets.cfg.slow_critic_fraction
    slow_critic = jax.tree.map(lambda s, c: (1 - fraction) * s + fraction * c, state.slow_critic, critic)

    new_state = TrainState(wm=wm, actor=actor, critic=critic, slow_critic=slow_critic, wm_opt=wm_opt,
                           actor_opt=actor_opt, critic_opt=critic_opt, return_norm=aux["return_norm"],
                           updates=state.updates + 1)
    return new_state, {**wm_metrics, **actor_metrics, **critic_metrics}
