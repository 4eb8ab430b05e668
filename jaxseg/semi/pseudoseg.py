"""PseudoSeg (Zou et al. 2021), simplified for any segmentation network.

On the weakly augmented unlabeled view, two sources of evidence are fused into a
soft pseudo-label that supervises the strongly augmented view:

1. the decoder's prediction ``p``;
2. a self-attention refinement of it: the image and ``p`` are pooled 4x, every
   position attends to every other by the scaled dot-product similarity of its
   (image, logit) features, and ``p`` is propagated along the attention weights
   — a parameter-free stand-in for the paper's self-attention Grad-CAM.

Calibrated fusion: both maps are normalised to the same mean foreground mass as
``p`` and averaged; the result is sharpened with temperature ``T``
(``p^(1/T) / (p^(1/T) + (1-p)^(1/T))``) and used as a soft target for the
cross-entropy of the strong view, weighted by ``weight``. The strong view adds
gray-value jitter and Gaussian noise (photometric, so the pseudo-label stays
aligned). Simplifications against the paper: no separate Grad-CAM head (the
attention map is computed from the network's own output, parameter-free), binary
or per-class sigmoid-style fusion, and no distribution alignment beyond the mass
calibration.
"""

import jax
import jax.numpy as jnp

from jaxseg.data import augment
from jaxseg.models.interface import probabilities
from jaxseg.semi import Method, base
from jaxseg.train import step as step_lib

POOL = 4


def attention_refine(image, probs):
  """Propagates ``probs [B, H, W, K]`` along feature self-attention at 1/4 resolution."""
  b, h, w, k = probs.shape
  hp, wp = h // POOL, w // POOL
  pool = lambda x: x[:, : hp * POOL, : wp * POOL].reshape(b, hp, POOL, wp, POOL, -1).mean((2, 4))  # noqa: E731
  feats = jnp.concatenate([pool(image), pool(probs)], -1).reshape(b, hp * wp, -1)
  feats = (feats - feats.mean(1, keepdims=True)) / (feats.std(1, keepdims=True) + 1e-6)
  attn = jax.nn.softmax(jnp.einsum("bnc,bmc->bnm", feats, feats) / jnp.sqrt(feats.shape[-1]), -1)
  refined = jnp.einsum("bnm,bmk->bnk", attn, pool(probs).reshape(b, hp * wp, k))
  refined = refined.reshape(b, hp, 1, wp, 1, k)
  refined = jnp.broadcast_to(refined, (b, hp, POOL, wp, POOL, k)).reshape(
    b, hp * POOL, wp * POOL, k
  )
  return jnp.pad(refined, ((0, 0), (0, h - hp * POOL), (0, w - wp * POOL), (0, 0)), mode="edge")


def fuse(probs, refined, temperature):
  """Mass-calibrated average of the two maps, sharpened with ``temperature``."""
  mass = probs.mean((1, 2), keepdims=True)
  refined = jnp.clip(refined * mass / (refined.mean((1, 2), keepdims=True) + 1e-6), 0.0, 1.0)
  fused = jnp.clip(0.5 * (probs + refined), 1e-6, 1 - 1e-6)
  sharp = fused ** (1 / temperature)
  if probs.shape[-1] == 1:
    return sharp / (sharp + (1 - fused) ** (1 / temperature))
  return sharp / sharp.sum(-1, keepdims=True)


def make(temperature: float = 0.5, weight: float = 1.0, noise: float = 0.05) -> Method:
  """``temperature``: sharpening of the fused pseudo-label; ``weight``: of its loss;
  ``noise``: std of the Gaussian noise of the strong view."""

  def step(ctx, state, labeled, unlabeled, key):
    key = jax.random.fold_in(key, state.step)
    k_aug, k_strong, k_noise, k_drop = jax.random.split(key, 4)
    labeled, weak = step_lib.augmented(ctx, k_aug, labeled, unlabeled)
    strong = augment.gray_value(
      k_strong, {"image": weak["image"]}, brightness=0.2, contrast=0.4, gamma=0.4
    )["image"]
    strong = strong + noise * jax.random.normal(k_noise, strong.shape)
    net = state.nets["model"]
    weak_out, _ = step_lib.forward(
      ctx, net.params, net.batch_stats, weak["image"], k_drop, train=False
    )
    probs = probabilities(weak_out.logits)
    image = weak["image"][:, : probs.shape[1], : probs.shape[2]]
    target = jax.lax.stop_gradient(fuse(probs, attention_refine(image, probs), temperature))
    target = target[..., 0] if target.shape[-1] == 1 else target

    def loss_of(params):
      sup_out, un_out, stats = step_lib.forward_pair(
        ctx, params, net.batch_stats, labeled, strong, k_drop
      )
      sup = step_lib.supervised_loss(ctx, sup_out, labeled)
      unsup = base.pseudo_label_loss(un_out.logits, target)
      return sup + weight * unsup, (stats, sup, unsup)

    (loss, (stats, sup, unsup)), grads = step_lib.value_and_grad(ctx, loss_of, net.params)
    net = step_lib.apply_grads(ctx.tx, net, grads, stats)
    metrics = {"loss": loss, "sup": sup, "unsup": unsup}
    return state.replace(step=state.step + 1, nets={"model": net}), metrics

  return Method(init=base.init_one, step=step, evaluated="model", exchanged=("model",))
