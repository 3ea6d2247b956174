"""DreamerV3's networks in Flax linen (Hafner et al. 2023, arXiv:2301.04104v1, Sec. 2 and App. B).

Everything here is a pure function of explicit parameters and PRNG keys: `agent.py` scans the RSSM steps over time
with `jax.lax.scan`, so the time loops stay visible and the whole update is one `jax.jit`.

Written by reading the official code at the paper's version side by side (danijar/dreamerv3 @84ecf19, `nets.py`,
`jaxutils.py`). `symlog`, `symexp`, the two-hot functions, `unimix_logits` and `categorical_kl` (within the KL
terms) are checked against danijar/dreamerv3's own functions at e3f0224 on fixed inputs
(`tests/test_official_parity.py`; its `outs.TwoHot` set to these bins: HEAD's head, in raw space, differs as the
README says); for the rest no test compares outputs with it, the tests check these properties:
- every hidden layer is Dense (no bias) → LayerNorm (ε = 1e-3) → SiLU, initialised with a truncated normal of
  variance 1/fan_avg; output layers are uniform with variance `outscale`/fan_avg and a bias; the reward and critic
  outputs start at zero (outscale 0), so their first predictions are exactly 0;
- the GRU has one LayerNorm over its 3·deter pre-activations and a −1 bias on the update gate;
- categoricals mix in 1% uniform ("unimix") and are sampled straight-through.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

# -------------------------------------------------------------------------------------------------- transforms
def symlog(x: jax.Array) -> jax.Array:
    """symlog(x) = sign(x)·ln(|x| + 1) (Eq. 9): compresses large magnitudes, keeps small ones, invertible."""
    return jnp.sign(x) * jnp.log1p(jnp.abs(x))


def symexp(x: jax.Array) -> jax.Array:
    """symexp(x) = sign(x)·(exp(|x|) − 1), the inverse of symlog (Eq. 9)."""
    return jnp.sign(x) * jnp.expm1(jnp.abs(x))


def twohot_bins(n: int = 255) -> jax.Array:
    """B = linspace(−20, 20, n) in symlog space, i.e. symexp(B) spans about ±4.9e8 (Eq. 10)."""
    return jnp.linspace(-20.0, 20.0, n)


def twohot(y: jax.Array, bins: jax.Array) -> jax.Array:
    """twohot(y) (Eq. 11): symlog(y) split between its two neighbouring bins, each weighted by the *other* bin's
    distance (so the weights sum to one and their mean is symlog(y)); values beyond the ends go to the end bin.
    (...) → (..., n)."""
    x = symlog(y)[..., None]
    n = bins.shape[0]
    below = jnp.clip((bins <= x).sum(-1) - 1, 0, n - 1)
    above = jnp.clip(n - (bins > x).sum(-1), 0, n - 1)
    x = x[..., 0]
    dist_below, dist_above = jnp.abs(bins[below] - x), jnp.abs(bins[above] - x)
    same = below == above  # outside the range: all weight on one end bin
    dist_below, dist_above = jnp.where(same, 1.0, dist_below), jnp.where(same, 1.0, dist_above)
    total = dist_below + dist_above
    return (jax.nn.one_hot(below, n) * (dist_above / total)[..., None]
            + jax.nn.one_hot(above, n) * (dist_below / total)[..., None])


def twohot_mean(logits: jax.Array, bins: jax.Array) -> jax.Array:
    """The prediction ŷ = symexp(softmax(logits)ᵀ B) (Eq. 10): the expectation is taken in symlog space."""
    return symexp((jax.nn.softmax(logits.astype(jnp.float32), -1) * bins).sum(-1))


def twohot_loss(logits: jax.Array, y: jax.Array, bins: jax.Array) -> jax.Array:
    """−twohot(y)ᵀ log softmax(logits): the categorical cross-entropy of Eq. 10, per element of y."""
    return -(jax.lax.stop_gradient(twohot(y, bins)) * jax.nn.log_softmax(logits.astype(jnp.float32), -1)).sum(-1)


# ----------------------------------------------------------------------------------------- categorical latents
def unimix_logits(logits: jax.Array, unimix: float) -> jax.Array:
    """log(0.99·softmax(logits) + 0.01/K): 1% uniform mixed in, so no probability reaches 0 and KLs stay bounded."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), -1)
    return jnp.log((1 - unimix) * probs + unimix / logits.shape[-1])


def sample_onehot(key: jax.Array, logits: jax.Array) -> jax.Array:
    """A one-hot sample with straight-through gradients: onehot + p − sg(p) (Bengio et al. 2013; DreamerV2)."""
    probs = jax.nn.softmax(logits, -1)
    sample = jax.nn.one_hot(jax.random.categorical(key, logits), logits.shape[-1])
    return sample + probs - jax.lax.stop_gradient(probs)


def categorical_kl(logits_p: jax.Array, logits_q: jax.Array) -> jax.Array:
    """KL(p ‖ q) of independent categoricals (..., stoch, classes), summed over the latents → (...)."""
    log_p, log_q = jax.nn.log_softmax(logits_p, -1), jax.nn.log_softmax(logits_q, -1)
    return (jnp.exp(log_p) * (log_p - log_q)).sum((-2, -1))


# ------------------------------------------------------------------------------------------------------ layers
HIDDEN_INIT = nn.initializers.variance_scaling(1.0, "fan_avg", "truncated_normal")


def output_init(outscale: float):
    """Uniform with variance outscale/fan_avg; exactly zero for outscale 0 (the reward and critic heads)."""
    return nn.initializers.zeros if outscale == 0 else nn.initializers.variance_scaling(outscale, "fan_avg", "uniform")


class Norm(nn.Module):
    """LayerNorm with ε = 1e-3, computed in float32."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.LayerNorm(epsilon=1e-3, dtype=jnp.float32)(x).astype(x.dtype)


class Dense(nn.Module):
    """Dense (no bias) → LayerNorm → SiLU: every hidden layer of DreamerV3."""
    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.silu(Norm()(nn.Dense(self.features, use_bias=False, kernel_init=HIDDEN_INIT)(x)))


class MLP(nn.Module):
    """`layers` hidden layers, then an output layer of `out` features (a tuple gives several output heads)."""
    layers: int
    units: int
    out: int | tuple[int, ...]
    outscale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array):
        for _ in range(self.layers):
            x = Dense(self.units)(x)
        outs = [nn.Dense(n, kernel_init=output_init(self.outscale))(x)
                for n in (self.out if isinstance(self.out, tuple) else (self.out,))]
        return tuple(outs) if isinstance(self.out, tuple) else outs[0]


# ------------------------------------------------------------------------------------------------------- RSSM
class RSSM(nn.Module):
    """Recurrent state-space model (Eq. 1): h_t = f(h_{t−1}, z_{t−1}, a_{t−1}) (a GRU), prior ẑ_t ~ p(ẑ | h_t),
    posterior z_t ~ q(z | h_t, x_t); z is `stoch` categoricals of `classes` classes each.

    A state is a dict {deter (B, deter), stoch (B, stoch, classes) one-hot, logits (B, stoch, classes)}.
    """
    deter: int
    units: int
    stoch: int
    classes: int
    unimix: float

    def setup(self):
        self.initial_deter = self.param("initial_deter", nn.initializers.zeros, (self.deter,))
        self.img_in = Dense(self.units)
        self.gru = nn.Dense(3 * self.deter, use_bias=False, kernel_init=HIDDEN_INIT)
        self.gru_norm = Norm()
        self.img_out = Dense(self.units)
        self.img_logits = nn.Dense(self.stoch * self.classes, kernel_init=output_init(1.0))
        self.obs_out = Dense(self.units)
        self.obs_logits = nn.Dense(self.stoch * self.classes, kernel_init=output_init(1.0))

    def initial(self, batch: int) -> dict:
        """The learned initial state: h₀ = tanh(w), z₀ = the mode of the prior at h₀."""
        deter = jnp.broadcast_to(jnp.tanh(self.initial_deter), (batch, self.deter))
        logits = self.prior_logits(deter)
        return dict(deter=deter, stoch=jax.nn.one_hot(logits.argmax(-1), self.classes), logits=logits)

    def prior_logits(self, deter: jax.Array) -> jax.Array:
        logits = self.img_logits(self.img_out(deter)).reshape(*deter.shape[:-1], self.stoch, self.classes)
        return unimix_logits(logits, self.unimix)

    def img_step(self, state: dict, action: jax.Array, key: jax.Array) -> dict:
        """One step of the sequence model and the prior: (h, z, a) → h′ → ẑ′ ~ p(ẑ′ | h′)."""
        action = action * jax.lax.stop_gradient(1.0 / jnp.maximum(1.0, jnp.abs(action)))  # clip to [-1, 1]
        x = self.img_in(jnp.concatenate([state["stoch"].reshape(*action.shape[:-1], -1), action], -1))
        deter = self.gru_step(x, state["deter"])
        logits = self.prior_logits(deter)
        return dict(deter=deter, stoch=sample_onehot(key, logits), logits=logits)

    def gru_step(self, x: jax.Array, deter: jax.Array) -> jax.Array:
        """GRU (Cho et al. 2014) with a LayerNorm on its pre-activations and the update gate biased to keep the
        state: r = σ(·), c = tanh(r ⊙ ·), u = σ(· − 1), h′ = u ⊙ c + (1 − u) ⊙ h."""
        reset, cand, update = jnp.split(self.gru_norm(self.gru(jnp.concatenate([deter, x], -1))), 3, -1)
        reset = jax.nn.sigmoid(reset)
        cand = jnp.tanh(reset * cand)
        update = jax.nn.sigmoid(update - 1)
        return update * cand + (1 - update) * deter

    def obs_step(self, state: dict, action: jax.Array, embed: jax.Array, is_first: jax.Array,
                 key: jax.Array) -> tuple[dict, dict]:
        """One filtering step: where an episode starts the previous state and action are replaced by the initial
        state and zeros; then the prior step, and the posterior z ~ q(z | h, x) from h and the observation
        embedding. Returns (posterior, prior)."""
        initial = self.initial(action.shape[0])
        state = jax.tree.map(lambda s, i: jnp.where(is_first.reshape(-1, *[1] * (s.ndim - 1)), i, s), state, initial)
        action = jnp.where(is_first[:, None], 0.0, action)
        prior_key, post_key = jax.random.split(key)
        prior = self.img_step(state, action, prior_key)
        logits = self.obs_logits(self.obs_out(jnp.concatenate([prior["deter"], embed], -1)))
        logits = unimix_logits(logits.reshape(-1, self.stoch, self.classes), self.unimix)
        post = dict(deter=prior["deter"], stoch=sample_onehot(post_key, logits), logits=logits)
        return post, prior


def features(state: dict) -> jax.Array:
    """The model state s = [h, z] that every head, the actor and the critic read."""
    return jnp.concatenate([state["deter"], state["stoch"].reshape(*state["deter"].shape[:-1], -1)], -1)


# --------------------------------------------------------------------------------------------- encoder/decoder
class Encoder(nn.Module):
    """Pixels (..., 64, 64, C) uint8 → x/255 − 0.5 → stride-2 convolutions (kernel 4; depth, 2·depth, … channels;
    each Conv → LayerNorm → SiLU) down to 4×4 → flattened embedding."""
    depth: int
    minres: int = 4

    @nn.compact
    def __call__(self, image: jax.Array) -> jax.Array:
        lead = image.shape[:-3]
        x = image.reshape(-1, *image.shape[-3:]).astype(jnp.float32) / 255.0 - 0.5
        stages = int(math.log2(image.shape[-2] // self.minres))
        for i in range(stages):
            x = nn.Conv(self.depth * 2 ** i, (4, 4), strides=2, padding="SAME", use_bias=False,
                        kernel_init=HIDDEN_INIT)(x)
            x = nn.silu(Norm()(x))
        return x.reshape(*lead, -1)


class Decoder(nn.Module):
    """Model state → Dense to 4×4×(8·depth) → stride-2 transposed convolutions (kernel 4) up to the image size,
    halving channels each stage; the last has 3 channels, no norm; output + 0.5, compared with x/255 (MSE)."""
    depth: int
    image_size: int
    channels: int = 3
    minres: int = 4

    @nn.compact
    def __call__(self, feat: jax.Array) -> jax.Array:
        lead = feat.shape[:-1]
        stages = int(math.log2(self.image_size // self.minres))
        depth = self.depth * 2 ** (stages - 1)
        x = nn.Dense(self.minres * self.minres * depth, kernel_init=output_init(1.0))(feat.reshape(-1, feat.shape[-1]))
        x = x.reshape(-1, self.minres, self.minres, depth)
        for i in range(stages - 1):
            depth //= 2
            x = nn.ConvTranspose(depth, (4, 4), strides=(2, 2), padding="SAME", use_bias=False,
                                 kernel_init=HIDDEN_INIT)(x)
            x = nn.silu(Norm()(x))
        x = nn.ConvTranspose(self.channels, (4, 4), strides=(2, 2), padding="SAME", kernel_init=output_init(1.0))(x)
        return x.reshape(*lead, *x.shape[1:]) + 0.5


class VectorEncoder(nn.Module):
    """A state vector → symlog (Eq. 9: inputs of any scale) → `layers` hidden layers of `units`."""
    layers: int
    units: int

    @nn.compact
    def __call__(self, vector: jax.Array) -> jax.Array:
        x = symlog(vector.astype(jnp.float32))
        for _ in range(self.layers):
            x = Dense(self.units)(x)
        return x


# ------------------------------------------------------------------------------------------- the three networks
class WorldModel(nn.Module):
    """Encoder, RSSM and the heads that predict the observation (image, or a state vector when `vector_dim` > 0),
    the reward (two-hot, symlog bins) and the continue flag (Bernoulli) from the model state (Sec. 2)."""
    deter: int
    units: int
    layers: int
    cnn_depth: int
    stoch: int
    classes: int
    unimix: float
    bins: int
    image_size: int
    vector_dim: int = 0  # > 0: observations are state vectors of this size (MLPs instead of CNNs)

    def setup(self):
        if self.vector_dim:
            self.encoder = VectorEncoder(self.layers, self.units)
            self.decoder = MLP(self.layers, self.units, self.vector_dim)  # predicts symlog(x) (Sec. 2)
        else:
            self.encoder = Encoder(self.cnn_depth)
            self.decoder = Decoder(self.cnn_depth, self.image_size)
        self.rssm = RSSM(self.deter, self.units, self.stoch, self.classes, self.unimix)
        self.reward_head = MLP(self.layers, self.units, self.bins, outscale=0.0)
        self.cont_head = MLP(self.layers, self.units, 1)

    def encode(self, obs: jax.Array) -> jax.Array:
        return self.encoder(obs)

    def initial(self, batch: int) -> dict:
        return self.rssm.initial(batch)

    def obs_step(self, state, action, embed, is_first, key):
        return self.rssm.obs_step(state, action, embed, is_first, key)

    def img_step(self, state, action, key):
        return self.rssm.img_step(state, action, key)

    def heads(self, feat: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(decoded observation, reward logits, continue logit) from model states."""
        return self.decoder(feat), self.reward_head(feat), self.cont_head(feat)[..., 0]

    def reward_and_cont(self, feat: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.reward_head(feat), self.cont_head(feat)[..., 0]

    def __call__(self, obs, state, action, is_first, key):  # used once, by `init`, to create every parameter
        post, _ = self.obs_step(state, action, self.encode(obs), is_first, key)
        return self.heads(features(post))


class Actor(nn.Module):
    """π(a | s): for continuous actions Normal(tanh(μ), σ) with σ = (σmax − σmin)·sigmoid(ρ + 2) + σmin (trained by
    backpropagating returns through the dynamics); for discrete actions a categorical with 1% unimix (trained by
    REINFORCE)."""
    layers: int
    units: int
    action_dim: int
    discrete: bool
    unimix: float
    min_std: float
    max_std: float

    @nn.compact
    def __call__(self, feat: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(logits, None) for discrete actions, (mean, std) for continuous ones."""
        if self.discrete:
            logits = MLP(self.layers, self.units, self.action_dim)(feat)
            return unimix_logits(logits, self.unimix), None
        mean, std = MLP(self.layers, self.units, (self.action_dim, self.action_dim))(feat)
        return jnp.tanh(mean), (self.max_std - self.min_std) * jax.nn.sigmoid(std + 2.0) + self.min_std


class Critic(nn.Module):
    """v(s): two-hot logits over symlog bins, the output layer zero-initialised (Sec. 3)."""
    layers: int
    units: int
    bins: int

    @nn.compact
    def __call__(self, feat: jax.Array) -> jax.Array:
        return MLP(self.layers, self.units, self.bins, outscale=0.0)(feat)
