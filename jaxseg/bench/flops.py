"""Counting multiply-accumulates, by two general mechanisms (no per-model formulas).

* :func:`jaxpr_macs` walks the jaxpr of any function and counts the MACs of every
  convolution (``conv_general_dilated``) and matrix product (``dot_general``),
  recursing into sub-jaxprs (jit, custom derivatives, scans times their length).
* :func:`paper_macs` reproduces the convention of the PyTorch counter ``thop`` (2021)
  that the SCAUnet paper's "GFLOPS" column used, with layer-level hooks
  (``flax.linen.intercept_methods``) as thop uses module hooks: a layer with a
  ``kernel`` (conv, dense) costs its fan-in per output element plus 1 for a bias;
  BatchNorm 2 per element; LeakyReLU 1 per element; global average pooling
  ``H*W + 1`` per output; everything else (ReLU, sigmoid, pooling, resizing) 0.
"""

import math

import jax
from flax import linen as nn

from jaxseg.models.layers import GlobalAvgPool, LeakyReLU


def _sub_jaxprs(eqn):
  for value in eqn.params.values():
    for item in value if isinstance(value, tuple | list) else (value,):
      if isinstance(item, jax.extend.core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jax.extend.core.Jaxpr):
        yield item


def _walk(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      out, rhs = eqn.outvars[0].aval, eqn.invars[1].aval
      spec = eqn.params["dimension_numbers"].rhs_spec  # (out feat, in feat, *spatial)
      per_output = math.prod(rhs.shape[d] for d in spec[1:])  # (C_in / groups) * k_h * k_w
      total += out.size * per_output
    elif name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval
      total += eqn.outvars[0].aval.size * math.prod(lhs.shape[d] for d in contract)
    subs = [_walk(sub) for sub in _sub_jaxprs(eqn)]
    if name == "cond":
      total += max(subs, default=0)
    else:
      total += sum(subs) * (eqn.params["length"] if name == "scan" else 1)
  return total


def jaxpr_macs(fn, *args) -> int:
  """MACs of convolutions and matrix products in ``fn(*args)`` (traced, not run)."""
  return _walk(jax.make_jaxpr(fn)(*args).jaxpr)


def _layer_cost(module: nn.Module, inputs, output) -> int:
  size = sum(x.size for x in jax.tree.leaves(output))
  if isinstance(module, LeakyReLU):
    return size
  if isinstance(module, GlobalAvgPool):
    h, w = inputs[0].shape[1:3]
    return size * (h * w + 1)
  if isinstance(module, nn.BatchNorm):
    return 2 * size
  params = module.variables.get("params", {})
  if "kernel" in params:
    kernel = params["kernel"]
    cost = size * (kernel.size // kernel.shape[-1])
    return cost + (size if "bias" in params else 0)
  return 0


def paper_macs(model: nn.Module, variables, x) -> int:
  """MACs of ``model.apply(variables, x)`` under the thop convention (see module doc)."""
  total = 0

  def count(next_fun, args, kwargs, context):
    nonlocal total
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__":
      total += _layer_cost(context.module, args, out)
    return out

  with nn.intercept_methods(count):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  return total
