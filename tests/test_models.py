"""Every model in the table: shapes, gradients, determinism, pinned sizes."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxseg import models
from jaxseg.models import layers, unet_paper
from jaxseg.train.state import count_params

# Tiny variants for the forward/backward tests, and the input size each needs.
TINY = {
  "unet": (dict(widths=(4, 8, 16)), 32),
  "unet_paper": (dict(widths=(4, 8), dropout_rate=0.5), 44),
}


def _init(model, shape):
  return jax.jit(model.init)(
    {"params": jax.random.key(0), "dropout": jax.random.key(1)}, jnp.zeros(shape)
  )


def test_tiny_table_covers_every_model():
  assert set(TINY) == set(models.MODELS)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_reference_parameter_count(name):
  module = importlib.import_module(models.MODELS[name].split(":")[0])
  model = models.get_model(name, **module.REFERENCE)
  size = 572 if name == "unet_paper" else 64
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 1))))
  assert count_params(variables["params"]) == module.REFERENCE_PARAMS


def test_unet_paper_tile_sizes():
  model = models.get_model("unet_paper", **unet_paper.REFERENCE)
  out = jax.eval_shape(
    lambda: model.init_with_output(jax.random.key(0), jnp.zeros((1, 572, 572, 1)))[0]
  )
  assert out.shape == (1, 388, 388, 2)
  assert unet_paper.output_size(572) == 388
  conv_layers = sum(
    1
    for _ in jax.tree.leaves(
      jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 572, 572, 1))))["params"],
      is_leaf=lambda x: isinstance(x, dict) and "kernel" in x,
    )
  )
  assert conv_layers == 23
  with pytest.raises(ValueError, match="even size"):
    unet_paper.output_size(570)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_forward_backward(name):
  kwargs, size = TINY[name]
  model = models.get_model(name, in_channels=2, num_classes=3, **kwargs)
  x = jax.random.normal(jax.random.key(2), (2, size, size, 2))
  variables = _init(model, x.shape)

  def loss(params, key):
    out, _ = model.apply(
      {**variables, "params": params}, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"]
    )
    return jnp.mean(out**2), out

  grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (value, out), grads = grad_fn(variables["params"], jax.random.key(3))
  assert out.shape[0] == 2 and out.shape[-1] == 3
  assert np.isfinite(value)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert any(np.any(g != 0) for g in jax.tree.leaves(grads))
  # Same key -> same result; eval mode is deterministic and differs from train mode
  # (BatchNorm running statistics, dropout off).
  (value2, _), _ = grad_fn(variables["params"], jax.random.key(3))
  assert value == value2
  eval_out = jax.jit(lambda v: model.apply(v, x, train=False))(variables)
  np.testing.assert_array_equal(eval_out, jax.jit(lambda v: model.apply(v, x))(variables))
  assert not np.allclose(eval_out, out)


def test_dropout_active_only_in_training():
  model = models.get_model("unet_paper", widths=(4, 8), dropout_rate=0.5)
  x = jax.random.normal(jax.random.key(0), (1, 44, 44, 1))
  variables = _init(model, x.shape)
  apply = jax.jit(lambda key: model.apply(variables, x, train=True, rngs={"dropout": key}))
  assert not np.allclose(apply(jax.random.key(1)), apply(jax.random.key(2)))
  np.testing.assert_array_equal(apply(jax.random.key(1)), apply(jax.random.key(1)))


def test_upconv_equals_transposed_convolution():
  x = jax.random.normal(jax.random.key(0), (2, 5, 6, 3))
  up = layers.UpConv2x2(4)
  params = up.init(jax.random.key(1), x)
  ref = nn.ConvTranspose(4, (2, 2), strides=(2, 2), padding="VALID")
  # Without transpose_kernel, lax's transposed conv applies the kernel spatially
  # flipped; feed it the flipped kernel so both compute the same map.
  ref_params = {
    "params": {
      "kernel": jnp.flip(params["params"]["kernel"], (0, 1)),
      "bias": params["params"]["bias"],
    }
  }
  np.testing.assert_allclose(up.apply(params, x), ref.apply(ref_params, x), atol=1e-5)


def test_resize_nearest_matches_index_rule():
  x = jnp.arange(3 * 5, dtype=jnp.float32).reshape(1, 3, 5, 1)
  y = layers.resize_nearest(x, (7, 11))
  rows, cols = (np.arange(7) * 3) // 7, (np.arange(11) * 5) // 11
  np.testing.assert_array_equal(y[0, ..., 0], np.asarray(x)[0, ..., 0][rows][:, cols])


def test_unknown_model_lists_known_names():
  with pytest.raises(ValueError, match="Unknown model name 'resnet'.*unet, unet_paper"):
    models.get_model("resnet")
