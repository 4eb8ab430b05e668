"""What the rest of jaxseg may know of a segmentation model, and how its outputs decode.

Every model of :data:`jaxseg.models.MODELS` has an ``interface`` property
(:class:`Interface`): its input channels, output classes, whether its training pass
takes the labels (the Probabilistic U-Net's posterior net) and its total stride (tiles
of the overlap-tile prediction align to it). A model returns logits, or a dict with
``logits`` (what is evaluated), ``heads`` (each trained with the loss: deep
supervision), and optionally ``regularizer`` (added to the loss) and ``samples``;
:func:`decode` turns either into :class:`Outputs`, and :func:`probabilities` is the
one place where logits become probabilities.
"""

from typing import Any, NamedTuple

import jax


class Interface(NamedTuple):
  in_channels: int
  num_classes: int  # output channels; 1: binary logits
  takes_labels: bool
  stride: int  # total down-sampling factor


class Outputs(NamedTuple):
  logits: jax.Array  # [B, H', W', K]: the evaluated prediction
  heads: tuple  # logits each trained with the loss
  regularizer: Any = None  # a scalar added to the loss (prob_unet: beta * KL)
  samples: Any = None  # [m, B, H', W', K] (prob_unet with num_samples)

  def take(self, index) -> "Outputs":
    """The outputs of the examples ``index`` (a slice of the batch axis)."""
    return self._replace(logits=self.logits[index], heads=tuple(h[index] for h in self.heads))

  def astype(self, dtype) -> "Outputs":
    cast = lambda a: None if a is None else a.astype(dtype)  # noqa: E731
    return Outputs(cast(self.logits), tuple(map(cast, self.heads)), cast(self.regularizer))


def decode(out) -> Outputs:
  """A model's raw output (an array or a dict) as :class:`Outputs`."""
  if isinstance(out, dict):
    return Outputs(
      out["logits"],
      tuple(out.get("heads", [out["logits"]])),
      out.get("regularizer"),
      out.get("samples"),
    )
  return Outputs(out, (out,))


def probabilities(logits: jax.Array) -> jax.Array:
  """Sigmoid of binary logits (``K == 1``), softmax over classes otherwise."""
  return jax.nn.sigmoid(logits) if logits.shape[-1] == 1 else jax.nn.softmax(logits)
