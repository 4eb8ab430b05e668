"""U-Net++ (Zhou et al. 2018): nested dense skip pathways, deep supervision."""

from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxseg.errors import UserError
from jaxseg.models.interface import Interface
from jaxseg.models.layers import CBA, max_pool, pool_kernels, resize_nearest, strides

REFERENCE = dict(in_channels=1, num_classes=1, widths=(32, 64, 128, 256, 512))
MODES = ("single", "deep", "accurate", "l1", "l2", "l3", "l4")


def average_heads(heads: Sequence[jax.Array]) -> jax.Array:
  """Logits of the average of the heads' probabilities (sigmoid or softmax).

  ``log mean p`` is computed with ``logsumexp`` so it is stable for large logits.
  """
  stacked = jnp.stack(heads)
  n = jnp.log(len(heads))
  if stacked.shape[-1] == 1:
    log_p = jax.nn.logsumexp(jax.nn.log_sigmoid(stacked), axis=0) - n
    log_q = jax.nn.logsumexp(jax.nn.log_sigmoid(-stacked), axis=0) - n
    return log_p - log_q
  return jax.nn.logsumexp(jax.nn.log_softmax(stacked), axis=0) - n


class UNetPP(nn.Module):
  """U-Net++ with nodes ``X^{i,j}`` (SPEC §6; recipe in architectures.md).

  Every node is a VGG block (two conv-BN-LeakyReLU); ``X^{i,j}`` (j > 0) sees the
  concatenation of ``X^{i,0..j-1}`` and the resized ``X^{i+1,j-1}``.

  Attributes:
    widths: channels per level; depth ``D = len(widths)`` gives heads on
      ``X^{0,1..D-1}``.
    num_classes: output channels (1: binary logits).
    in_channels: expected input channels.
    mode: ``single`` — one head on ``X^{0,D-1}`` (9,162,753 parameters at the
      reference widths); ``deep`` — deep supervision for training: a dict with every
      head (``heads``) and their average (``logits``) (9,162,852); ``accurate`` — the
      average of all heads; ``l1``..``l4`` — fast mode: only head ``X^{0,k}`` and
      the sub-network it needs (nodes with ``i + j <= k``) are computed, so FLOPs
      and time drop. ``deep``, ``accurate`` and ``lk`` share parameter names, so a
      model trained with ``deep`` is evaluated in any mode with the same parameters.
    spatial_dims, pool: as for :class:`~jaxseg.models.unet.UNet` (3: volumes).
  """

  # The parameter count of the defaults (the published recipe), pinned by a test.
  REFERENCE_PARAMS: ClassVar[int] = 9_162_753  # 9,162,852 with mode="deep"

  widths: Sequence[int] = REFERENCE["widths"]
  num_classes: int = 1
  in_channels: int = 1
  mode: str = "single"
  spatial_dims: int = 2
  pool: Sequence | None = None

  @property
  def interface(self) -> Interface:
    stride = max(self.strides)
    return Interface(self.in_channels, self.num_classes, takes_labels=False, stride=stride)

  @property
  def strides(self) -> tuple[int, ...]:
    return strides(self.pool, len(self.widths), self.spatial_dims)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False):
    if self.mode not in MODES:
      raise UserError(f"unetpp: unknown mode {self.mode!r}; known: {', '.join(MODES)}.")
    if x.shape[-1] != self.in_channels:
      raise UserError(f"UNetPP expects {self.in_channels} input channels, got {x.shape}.")
    depth = len(self.widths)
    last = int(self.mode[1]) if self.mode.startswith("l") else depth - 1
    if last >= depth:
      raise UserError(f"unetpp: mode {self.mode!r} needs depth > {last}, widths give {depth}.")

    dims, one = self.spatial_dims, (1,) * self.spatial_dims
    kernels = pool_kernels(self.pool, depth, dims)

    def block(inputs, i, j):
      width = self.widths[i]
      h = CBA(width, spatial_dims=dims, name=f"x{i}{j}_conv0")(inputs, train=train)
      return CBA(width, spatial_dims=dims, name=f"x{i}{j}_conv1")(h, train=train)

    nodes = {}
    for i in range(last + 1):  # backbone column X^{i,0}
      nodes[i, 0] = block(x if i == 0 else max_pool(nodes[i - 1, 0], kernels[i - 1]), i, 0)
    self.sow("intermediates", "features", nodes[last, 0])  # the deepest encoder map
    for j in range(1, last + 1):
      for i in range(last + 1 - j):
        up = resize_nearest(nodes[i + 1, j - 1], nodes[i, 0].shape[1:-1])
        nodes[i, j] = block(jnp.concatenate([nodes[i, k] for k in range(j)] + [up], -1), i, j)

    def head(j):
      return nn.Conv(self.num_classes, one, name=f"head{j}")(nodes[0, j])

    if self.mode == "single":
      return nn.Conv(self.num_classes, one, name="head")(nodes[0, depth - 1])
    if self.mode.startswith("l"):
      return head(last)
    heads = [head(j) for j in range(1, depth)]
    logits = average_heads(heads)
    return {"logits": logits, "heads": heads} if self.mode == "deep" else logits
