"""Segmentation architectures (``flax.linen``, NHWC) and their name table.

Every model is ``Model(**kwargs)`` with ``__call__(x, *, train=False)`` returning
logits ``[B, H', W', num_classes]`` (``num_classes == 1``: binary logits; sigmoid is
applied in the loss). ``H', W'`` equal the input size for same-padded networks and
are smaller for valid-convolution networks (``unet_paper``). A model with several
outputs returns a dict with ``logits`` (what is evaluated) and ``heads`` (each
trained with the loss), e.g. U-Net++ with deep supervision.
"""

from flax import linen as nn

from jaxseg import tables

MODELS = {
  "unet": "jaxseg.models.unet:UNet",
  "unet_paper": "jaxseg.models.unet_paper:UNetPaper",
  "wide_unet": "jaxseg.models.unet:WideUNet",
  "unetpp": "jaxseg.models.unetpp:UNetPP",
  "attention_unet": "jaxseg.models.attention_unet:AttentionUNet",
  "multires_unet": "jaxseg.models.multires_unet:MultiResUNet",
  "scaunet": "jaxseg.models.scaunet:SCAUNet",
  "scaunet_a": "jaxseg.models.scaunet:SCAUNetA",
  "segformer": "jaxseg.models.segformer:SegFormer",
  "prob_unet": "jaxseg.models.prob_unet:ProbUNet",
}


def get_model(name: str, **kwargs) -> nn.Module:
  """Builds the model ``name`` of :data:`MODELS` with ``kwargs``."""
  return tables.resolve(MODELS, name, "model")(**kwargs)
