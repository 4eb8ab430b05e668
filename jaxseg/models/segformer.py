"""SegFormer (Xie et al. 2021): a Mix Transformer encoder and an all-MLP decoder."""

from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxseg.errors import UserError
from jaxseg.models.interface import Interface
from jaxseg.models.layers import batch_norm

# Mix Transformer sizes: embedding dims, blocks, heads, sequence reduction, decoder width.
VARIANTS = {
  "b0": dict(dims=(32, 64, 160, 256), depths=(2, 2, 2, 2), decoder=256),
  "b1": dict(dims=(64, 128, 320, 512), depths=(2, 2, 2, 2), decoder=256),
  "b2": dict(dims=(64, 128, 320, 512), depths=(3, 4, 6, 3), decoder=768),
}
HEADS, SR_RATIOS = (1, 2, 5, 8), (8, 4, 2, 1)
REFERENCE = dict(in_channels=3, num_classes=150, variant="b0")


class EfficientSelfAttention(nn.Module):
  """Multi-head self-attention whose keys and values come from the sequence shrunk
  by a ``ratio x ratio`` strided conv (+ LayerNorm): cost ``N^2 / ratio^2``."""

  heads: int
  ratio: int

  @nn.compact
  def __call__(self, x, hw):
    b, n, c = x.shape
    q = nn.Dense(c, name="query")(x).reshape(b, n, self.heads, -1)
    kv = x
    if self.ratio > 1:
      grid = x.reshape(b, *hw, c)
      grid = nn.Conv(c, (self.ratio,) * 2, strides=self.ratio, padding="VALID", name="sr")(grid)
      kv = nn.LayerNorm(epsilon=1e-5, name="sr_norm")(grid.reshape(b, -1, c))
    k = nn.Dense(c, name="key")(kv).reshape(b, kv.shape[1], self.heads, -1)
    v = nn.Dense(c, name="value")(kv).reshape(b, kv.shape[1], self.heads, -1)
    weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]))
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, c)
    return nn.Dense(c, name="output")(out)


class MixFFN(nn.Module):
  """Dense -> 3x3 depthwise conv (positional information without encodings) -> GELU
  -> dense."""

  ratio: int

  @nn.compact
  def __call__(self, x, hw):
    b, n, c = x.shape
    h = nn.Dense(c * self.ratio, name="dense1")(x).reshape(b, *hw, c * self.ratio)
    h = nn.Conv(c * self.ratio, (3, 3), feature_group_count=c * self.ratio, name="dwconv")(h)
    h = nn.gelu(h.reshape(b, n, -1), approximate=False)
    return nn.Dense(c, name="dense2")(h)


class Block(nn.Module):
  heads: int
  ratio: int
  mlp_ratio: int
  drop_path: float

  @nn.compact
  def __call__(self, x, hw, *, train: bool):
    def residual(x, y):
      if train and self.drop_path > 0:  # stochastic depth, per example
        keep = jax.random.bernoulli(
          self.make_rng("dropout"), 1 - self.drop_path, (x.shape[0], 1, 1)
        )
        y = jnp.where(keep, y / (1 - self.drop_path), 0.0)
      return x + y

    y = EfficientSelfAttention(self.heads, self.ratio, name="attention")(
      nn.LayerNorm(epsilon=1e-6, name="norm1")(x), hw
    )
    x = residual(x, y)
    y = MixFFN(self.mlp_ratio, name="ffn")(nn.LayerNorm(epsilon=1e-6, name="norm2")(x), hw)
    return residual(x, y)


class SegFormer(nn.Module):
  """SegFormer: MiT encoder (overlapping patch embeddings: 7x7 stride 4, then 3x3
  stride 2; efficient self-attention; Mix-FFN), all-MLP decoder (per-stage linear to
  ``decoder`` channels, bilinear upsampling to 1/4, concatenation, 1x1 conv + BN +
  ReLU, dropout, 1x1 classifier), logits upsampled bilinearly to the input size.

  Attributes:
    variant: ``b0`` (default; 3,752,694 parameters for 3 input channels and 150
      classes, encoder 3,319,392; 3,711,265 for 1 channel and 1 class), ``b1``, ``b2``;
      ``dims``, ``depths``, ``decoder`` override its sizes.
    num_classes, in_channels: as for every model.
    mlp_ratio: Mix-FFN expansion (4).
    drop_path: stochastic depth rising linearly to this rate over the blocks (0.1, as
      the paper); dropout: before the classifier (0.1). Attention dropout: none.

  The input size must be a multiple of 32 (the deepest stage is 1/32).
  """

  # The parameter count of the defaults (the published recipe), pinned by a test.
  REFERENCE_PARAMS: ClassVar[int] = 3_711_265  # 3,752,694 for 3 channels, 150 classes

  variant: str = "b0"
  num_classes: int = 1
  in_channels: int = 1
  mlp_ratio: int = 4
  drop_path: float = 0.1
  dropout: float = 0.1
  dims: tuple | None = None  # overrides of the variant's sizes (e.g. tiny test models)
  depths: tuple | None = None
  decoder: int | None = None

  @property
  def spec(self) -> dict:
    if self.variant not in VARIANTS:
      raise UserError(f"segformer: unknown variant {self.variant!r}; known: {list(VARIANTS)}.")
    spec = dict(VARIANTS[self.variant])
    for name in ("dims", "depths", "decoder"):
      if getattr(self, name) is not None:
        spec[name] = getattr(self, name)
    return spec

  @property
  def widths(self):
    return self.spec["dims"]

  @property
  def interface(self) -> Interface:
    return Interface(self.in_channels, self.num_classes, takes_labels=False, stride=32)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    if x.shape[-1] != self.in_channels:
      raise UserError(f"SegFormer expects {self.in_channels} input channels, got {x.shape}.")
    if x.shape[1] % 32 or x.shape[2] % 32:
      raise UserError(f"SegFormer needs a height and width divisible by 32, got {x.shape}.")
    spec, image_size = self.spec, x.shape[1:3]
    total = sum(spec["depths"])
    rates = [self.drop_path * i / max(total - 1, 1) for i in range(total)]
    features, index = [], 0
    for stage, (dim, depth) in enumerate(zip(spec["dims"], spec["depths"], strict=True)):
      size, stride = (7, 4) if stage == 0 else (3, 2)
      x = nn.Conv(dim, (size, size), strides=stride, padding=size // 2, name=f"stage{stage}_embed")(
        x
      )
      b, h, w, _ = x.shape
      tokens = nn.LayerNorm(epsilon=1e-5, name=f"stage{stage}_embed_norm")(x.reshape(b, h * w, dim))
      for j in range(depth):
        block = Block(
          HEADS[stage],
          SR_RATIOS[stage],
          self.mlp_ratio,
          rates[index + j],
          name=f"stage{stage}_block{j}",
        )
        tokens = block(tokens, (h, w), train=train)
      index += depth
      x = nn.LayerNorm(epsilon=1e-6, name=f"stage{stage}_norm")(tokens).reshape(b, h, w, dim)
      features.append(x)
    quarter = features[0].shape[1:3]
    fused = [
      jax.image.resize(
        nn.Dense(spec["decoder"], name=f"decoder_linear{i}")(f),
        (f.shape[0], *quarter, spec["decoder"]),
        "bilinear",
      )
      for i, f in enumerate(features)
    ]
    x = jnp.concatenate(fused[::-1], axis=-1)
    x = nn.Conv(spec["decoder"], (1, 1), use_bias=False, name="decoder_fuse")(x)
    x = nn.relu(batch_norm(train, name="decoder_bn")(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Conv(self.num_classes, (1, 1), name="head")(x)
    return jax.image.resize(x, (x.shape[0], *image_size, x.shape[-1]), "bilinear")
