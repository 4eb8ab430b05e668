"""Every model in the table: shapes, gradients, determinism, pinned sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxseg import models, tables
from jaxseg.models import layers, unet_paper
from jaxseg.train.state import count_params

# Tiny variants for the forward/backward tests, and the input size each needs.
TINY = {
  "unet": (dict(widths=(4, 8)), 16),
  "unet_paper": (dict(widths=(4, 8), dropout_rate=0.5), 44),
  "wide_unet": (dict(widths=(5, 10)), 16),
  "unetpp": (dict(widths=(4, 8, 16), mode="deep"), 16),
  "attention_unet": (dict(widths=(4, 8)), 16),
  "multires_unet": (dict(widths=(4, 8)), 16),
  "scaunet": (dict(widths=(8, 16)), 16),
  "scaunet_a": (dict(widths=(8, 16), scale_width=4), 16),
  "segformer": (dict(dims=(8, 16, 20, 32), depths=(1, 1, 1, 1), decoder=8), 32),
  "prob_unet": (dict(widths=(4, 8)), 16),
}


# The published sizes (shared/reference/architectures.md) of each default model,
# declared next to each model as ``REFERENCE_PARAMS``.
def _reference_params(name):
  return tables.resolve(models.MODELS, name, "model").REFERENCE_PARAMS


def _count(model, size=64):
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 1))))
  return count_params(variables["params"])


def _init(model, shape):
  return jax.jit(model.init)(
    {"params": jax.random.key(0), "dropout": jax.random.key(1)}, jnp.zeros(shape)
  )


def test_tables_cover_every_model():
  assert set(TINY) == set(models.MODELS)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_reference_parameter_count(name):
  """Each model's default configuration is the reference recipe."""
  size = 572 if name == "unet_paper" else 64
  assert _count(models.get_model(name), size) == _reference_params(name)


def test_variant_parameter_counts():
  assert _count(models.get_model("unetpp", mode="deep")) == 9_162_852  # + 4 heads
  assert _count(models.get_model("unet", up_convs=1)) == 8_636_769
  # Self-attention over scales has no parameters: only ECA's 1-D kernels are gone.
  assert _count(models.get_model("scaunet", attention="self")) == 491_907 - 106
  assert _count(models.get_model("scaunet_a", attention="self")) == 164_795 - 106
  assert _count(models.get_model("scaunet", attention="scale_attention")) == 557_209
  assert _count(models.get_model("scaunet_a", attention="scale_attention")) == 171_345


def test_scale_attention_mixes_the_scales_of_each_pixel():
  """Learned query/key projections (2 m d parameters, d = m // 2), permutation
  equivariant over the scales, and a pixel's output depends on that pixel only."""
  from jaxseg.models.scaunet import SCAConv, ScaleAttention

  x = jnp.zeros((1, 8, 8, 3))

  def count(attention):
    variables = jax.eval_shape(lambda: SCAConv(4, 8, attention).init(jax.random.key(0), x))
    return count_params(variables["params"])

  assert count("scale_attention") - count("self") == 2 * 8 * 4
  attention = ScaleAttention()
  scales = jax.random.normal(jax.random.key(1), (2, 5, 5, 4, 8))
  variables = attention.init(jax.random.key(2), scales)
  out = attention.apply(variables, scales)
  order = jnp.array([2, 0, 3, 1])
  permuted = attention.apply(variables, scales[..., order, :])
  np.testing.assert_allclose(permuted, out[..., order, :], rtol=1e-5, atol=1e-6)
  changed = jnp.abs(attention.apply(variables, scales.at[0, 1, 1].add(1.0)) - out).sum((-2, -1))
  assert changed[0, 1, 1] > 0 and not changed.at[0, 1, 1].set(0).any()


def test_segformer_b0_size_of_the_paper():
  model = models.get_model("segformer", in_channels=3, num_classes=150)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  params = params["params"]
  assert count_params(params) == 3_752_694
  assert sum(count_params(v) for k, v in params.items() if k.startswith("stage")) == 3_319_392
  assert _count(models.get_model("segformer", variant="b1")) > 13_000_000
  with pytest.raises(ValueError, match="divisible by 32"):
    model.init(jax.random.key(0), jnp.zeros((1, 48, 48, 3)))


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
  logits = lambda out: out["logits"] if isinstance(out, dict) else out  # noqa: E731

  def loss(params, key):
    out, _ = model.apply(
      {**variables, "params": params}, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"]
    )
    return jnp.mean(logits(out) ** 2), logits(out)

  @jax.jit
  def run(params, key):  # one compiled function: train pass, gradients, eval pass
    (value, out), grads = jax.value_and_grad(loss, has_aux=True)(params, key)
    return value, out, grads, logits(model.apply({**variables, "params": params}, x))

  value, out, grads, eval_out = run(variables["params"], jax.random.key(3))
  assert out.shape[0] == 2 and out.shape[-1] == 3 and eval_out.shape == out.shape
  assert np.isfinite(value) and np.all(np.isfinite(eval_out))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert any(np.any(g != 0) for g in jax.tree.leaves(grads))
  # Same key -> same result; eval mode (BatchNorm running statistics, no dropout)
  # differs from train mode.
  value2, _, _, eval2 = run(variables["params"], jax.random.key(3))
  assert value == value2
  np.testing.assert_array_equal(eval_out, eval2)
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
  for size in ((7, 11), (6, 10)):  # general gather, and the integer-factor repeat
    y = layers.resize_nearest(x, size)
    rows, cols = (np.arange(size[0]) * 3) // size[0], (np.arange(size[1]) * 5) // size[1]
    np.testing.assert_array_equal(y[0, ..., 0], np.asarray(x)[0, ..., 0][rows][:, cols])


def test_unknown_model_lists_known_names():
  with pytest.raises(
    ValueError, match="Unknown model name 'resnet'.*scaunet_a, segformer, unet, unet_paper"
  ):
    models.get_model("resnet")


def test_unetpp_modes_share_parameters_and_prune():
  x = jax.random.normal(jax.random.key(0), (1, 32, 32, 1))
  deep = models.get_model("unetpp", widths=(4, 8, 16), mode="deep")
  variables = _init(deep, x.shape)
  out = deep.apply(variables, x)
  assert len(out["heads"]) == 2
  accurate = models.get_model("unetpp", widths=(4, 8, 16), mode="accurate").apply(variables, x)
  np.testing.assert_allclose(accurate, out["logits"], rtol=1e-6)
  # The average of the heads' probabilities, returned as logits.
  mean_p = np.mean([jax.nn.sigmoid(h) for h in out["heads"]], axis=0)
  np.testing.assert_allclose(jax.nn.sigmoid(accurate), mean_p, rtol=1e-5, atol=1e-6)
  for k in (1, 2):
    fast = models.get_model("unetpp", widths=(4, 8, 16), mode=f"l{k}")
    np.testing.assert_allclose(fast.apply(variables, x), out["heads"][k - 1], rtol=1e-5, atol=1e-6)
  pruned = _count(models.get_model("unetpp", widths=(4, 8, 16), mode="l1"), 32)
  assert pruned < _count(models.get_model("unetpp", widths=(4, 8, 16), mode="deep"), 32)
  with pytest.raises(ValueError, match="unknown mode 'l9'"):
    models.get_model("unetpp", mode="l9").apply(variables, x)


def test_eca_kernel_sizes():
  from jaxseg.models.scaunet import eca_kernel_size

  assert [eca_kernel_size(c) for c in (32, 64, 128, 256, 512)] == [3, 3, 5, 5, 5]
