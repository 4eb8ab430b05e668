"""Segmentation architectures (``flax.linen``, NHWC) and their name table.

Every model is ``Model(**kwargs)`` with ``__call__(x, *, train=False)`` returning
logits ``[B, H', W', num_classes]`` (``num_classes == 1``: binary logits; sigmoid is
applied in the loss). ``H', W'`` equal the input size for same-padded networks and
are smaller for valid-convolution networks (``unet_paper``).
"""

from flax import linen as nn

from jaxseg import tables

MODELS = {
  "unet": "jaxseg.models.unet:UNet",
  "unet_paper": "jaxseg.models.unet_paper:UNetPaper",
}


def get_model(name: str, **kwargs) -> nn.Module:
  """Builds the model ``name`` of :data:`MODELS` with ``kwargs``."""
  return tables.resolve(MODELS, name, "model")(**kwargs)
