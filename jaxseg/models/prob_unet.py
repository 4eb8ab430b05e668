"""Probabilistic U-Net (Kohl et al. 2018): a U-Net and a conditional latent space."""

from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxseg.errors import UserError
from jaxseg.models.interface import Interface
from jaxseg.models.layers import CBA, max_pool2
from jaxseg.models.unet import UNet


def kl_diagonal(q_mean, q_log_std, p_mean, p_log_std) -> jax.Array:
  """``KL(q || p)`` of axis-aligned Gaussians, summed over the last axis."""
  var_q, var_p = jnp.exp(2 * q_log_std), jnp.exp(2 * p_log_std)
  return jnp.sum(
    p_log_std - q_log_std + (var_q + (q_mean - p_mean) ** 2) / (2 * var_p) - 0.5, axis=-1
  )


class GaussianEncoder(nn.Module):
  """Image (or image + mask) -> axis-aligned Gaussian ``(mean, log_std)`` over z:
  the U-Net's contracting path, global average pooling, a 1x1 conv."""

  widths: Sequence[int]
  latent_dim: int

  @nn.compact
  def __call__(self, x, *, train: bool):
    for level, width in enumerate(self.widths):
      if level:
        x = max_pool2(x)
      x = CBA(width, name=f"down{level}_conv0")(x, train=train)
      x = CBA(width, name=f"down{level}_conv1")(x, train=train)
    x = jnp.mean(x, axis=(1, 2))
    stats = nn.Dense(2 * self.latent_dim, name="gaussian")(x)
    return stats[..., : self.latent_dim], stats[..., self.latent_dim :]


class ProbUNet(nn.Module):
  """Probabilistic U-Net: the U-Net's last feature map is concatenated with a latent
  sample ``z`` broadcast over space and mixed by 1x1 "combination" convs. A prior net
  (image) and a posterior net (image + mask) give axis-aligned Gaussians over z.

  ``__call__(x, labels=None, *, train, num_samples=0)`` returns a dict:

  * ``prior``: ``(mean, log_std)``; with ``labels``: ``posterior`` likewise, ``kl``
    (``KL(posterior || prior)``, mean over the batch), ``regularizer`` (``beta * kl``,
    added to the loss by the training step), and ``logits`` decoded from a posterior
    sample (rng stream ``dropout``) — the reconstruction term;
  * without ``labels``: ``logits`` decoded from the prior mean (the evaluated
    prediction);
  * ``num_samples = m > 0``: ``samples`` ``[m, B, H, W, K]`` decoded from m prior
    samples (rng stream ``sample``): the U-Net runs once, only the combination head
    once per sample;
  * ``heads``: ``[logits]`` (the loss is applied to them).

  Attributes:
    widths: U-Net and prior/posterior encoder widths (Kohl et al.: 32, 64, 128, 192).
    latent_dim: dimension of z (6).
    combination_convs: 1x1 convs of the combination head (3).
    beta: weight of the KL term (1.0).
  """

  # The parameter count of the defaults (the published recipe), pinned by a test.
  REFERENCE_PARAMS: ClassVar[int] = 3_622_809

  widths: Sequence[int] = (32, 64, 128, 192)
  num_classes: int = 1
  in_channels: int = 1
  latent_dim: int = 6
  combination_convs: int = 3
  beta: float = 1.0

  @property
  def interface(self) -> Interface:
    return Interface(
      self.in_channels, self.num_classes, takes_labels=True, stride=2 ** (len(self.widths) - 1)
    )

  @nn.compact
  def __call__(self, x, labels=None, *, train: bool = False, num_samples: int = 0):
    if x.shape[-1] != self.in_channels:
      raise UserError(f"ProbUNet expects {self.in_channels} input channels, got {x.shape}.")
    features = UNet(
      self.widths, num_classes=self.widths[0], in_channels=self.in_channels, name="unet"
    )(x, train=train)
    prior = GaussianEncoder(self.widths, self.latent_dim, name="prior")(x, train=train)
    combine = Combination(self.widths[0], self.num_classes, self.combination_convs, name="fcomb")
    out = {"prior": prior}
    if labels is None and self.is_initializing():  # create the posterior's parameters too
      labels = jnp.zeros(x.shape[:3], jnp.int32)
    if labels is not None:
      target = (
        labels[..., None].astype(x.dtype)
        if self.num_classes == 1
        else jax.nn.one_hot(labels, self.num_classes, dtype=x.dtype)
      )
      posterior = GaussianEncoder(self.widths, self.latent_dim, name="posterior")(
        jnp.concatenate([x, target], axis=-1), train=train
      )
      eps = jax.random.normal(self.make_rng("dropout"), posterior[0].shape)
      z = posterior[0] + jnp.exp(posterior[1]) * eps
      kl = jnp.mean(kl_diagonal(*posterior, *prior))
      out.update(
        posterior=posterior, kl=kl, regularizer=self.beta * kl, logits=combine(features, z)
      )
    else:
      out["logits"] = combine(features, prior[0])
    if num_samples:
      eps = jax.random.normal(self.make_rng("sample"), (num_samples, *prior[0].shape))
      z = prior[0] + jnp.exp(prior[1]) * eps  # [m, B, latent]
      tiled = jnp.broadcast_to(features, (num_samples, *features.shape))
      samples = combine(tiled.reshape(-1, *features.shape[1:]), z.reshape(-1, self.latent_dim))
      out["samples"] = samples.reshape(num_samples, *features.shape[:3], -1)
    out["heads"] = [out["logits"]]
    return out


class Combination(nn.Module):
  """``[features, z broadcast]`` -> 1x1 convs (ReLU between) -> logits."""

  width: int
  num_classes: int
  convs: int

  @nn.compact
  def __call__(self, features, z):
    z = jnp.broadcast_to(z[:, None, None, :], (*features.shape[:3], z.shape[-1]))
    x = jnp.concatenate([features, z], axis=-1)
    for i in range(self.convs - 1):
      x = nn.relu(nn.Conv(self.width, (1, 1), name=f"conv{i}")(x))
    return nn.Conv(self.num_classes, (1, 1), name="head")(x)
