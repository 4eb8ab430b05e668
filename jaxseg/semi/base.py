"""What the semi-supervised methods share beyond :mod:`jaxseg.train.step`: one-network
states, pseudo-labels and their loss, the consistency ramp-up."""

import jax
import jax.numpy as jnp
import optax

from jaxseg import losses, metrics
from jaxseg.train import state as state_lib
from jaxseg.train import step as step_lib


def init_one(ctx: step_lib.Context, key) -> state_lib.State:
  """The state of a one-network method: ``{"model"}``."""
  return state_lib.start({"model": step_lib.init_net(ctx, key)})


def hard_pseudo_labels(logits):
  """Stop-gradient hard labels (``logit > 0`` or argmax)."""
  return metrics.hard_labels(jax.lax.stop_gradient(logits))


def pseudo_label_map(logits, targets):
  """Per-pixel cross-entropy against (hard or soft) pseudo-labels, ``[B, ...]``."""
  if targets.ndim == logits.ndim:  # soft multi-class targets [B, H, W, K]
    return optax.softmax_cross_entropy(logits, targets)
  return losses.cross_entropy_map(logits, targets)


def pseudo_label_loss(logits, targets):
  """Cross-entropy against (hard or soft) pseudo-labels, mean over pixels."""
  return jnp.mean(pseudo_label_map(logits, targets))


def pseudo_label_info(y1, y2, pseudo=(True, True)) -> dict:
  """What a method's two predictors hold on the unlabeled batch (logged every step):
  ``pseudo_fg``, the foreground fraction of the hard pseudo-labels among them (the
  mean of those ``pseudo`` marks), and ``pseudo_agree``, the fraction of pixels on
  which the two agree. CPS: its two networks; RWP: its two perturbed copies (both
  pseudo-labels); Mean Teacher: teacher (the pseudo-label) and student; PseudoSeg: the
  fused pseudo-label of the weak view and the prediction of the strong view."""
  fg = [jnp.mean(y > 0) for y, used in zip((y1, y2), pseudo, strict=True) if used]
  return {"pseudo_fg": sum(fg) / len(fg), "pseudo_agree": jnp.mean(y1 == y2)}


def ramp_up(step, length: int):
  """The sigmoid-shaped ramp-up ``exp(-5 (1 - t)^2)`` of Laine & Aila / Mean Teacher."""
  t = jnp.clip(step / jnp.maximum(length, 1), 0.0, 1.0)
  return jnp.exp(-5.0 * (1.0 - t) ** 2)
