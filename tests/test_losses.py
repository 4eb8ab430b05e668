"""Losses against closed-form values."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import losses


def test_bce_closed_form():
  logits = jnp.array([0.0, 2.0, -1.0, 3.0]).reshape(1, 2, 2, 1)
  labels = jnp.array([1, 1, 0, 0]).reshape(1, 2, 2)
  sig = lambda z: 1 / (1 + math.exp(-z))
  expected = -np.mean(
    [math.log(0.5), math.log(sig(2)), math.log(1 - sig(-1)), math.log(1 - sig(3))]
  )
  np.testing.assert_allclose(losses.get_loss("bce")(logits, labels), expected, rtol=1e-6)


def test_softmax_and_weighted_ce_closed_form():
  logits = jnp.log(jnp.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])).reshape(1, 1, 2, 3)
  labels = jnp.array([0, 2]).reshape(1, 1, 2)
  ce = [-math.log(0.7), -math.log(0.8)]
  np.testing.assert_allclose(losses.softmax_ce(logits, labels), np.mean(ce), rtol=1e-6)
  weights = jnp.array([2.0, 0.5]).reshape(1, 1, 2)
  np.testing.assert_allclose(
    losses.weighted_ce(logits, labels, weights), (2.0 * ce[0] + 0.5 * ce[1]) / 2, rtol=1e-6
  )
  with pytest.raises(ValueError, match="needs per-pixel weights"):
    losses.weighted_ce(logits, labels)


def test_dice_closed_form_binary_and_multiclass():
  # Binary: p = sigmoid(logits); one image with p = [1, 0.5, 0, 0] (approximately).
  logits = jnp.array([40.0, 0.0, -40.0, -40.0]).reshape(1, 2, 2, 1)
  labels = jnp.array([1, 1, 0, 0]).reshape(1, 2, 2)
  inter, total = 1.5, 1.5 + 2
  expected = 1 - (2 * inter + 1) / (total + 1)
  np.testing.assert_allclose(losses.dice(logits, labels), expected, rtol=1e-5)
  # Multi-class: perfect one-hot logits give ~0; background is not a Dice class.
  labels = jnp.array([0, 1, 2, 2]).reshape(1, 2, 2)
  onehot = 80.0 * jnp.eye(3)[labels] - 40.0
  assert float(losses.dice(onehot, labels)) < 1e-6
  # An empty mask predicted empty has ~0 loss thanks to the smoothing term.
  assert float(losses.dice(jnp.full((1, 2, 2, 1), -40.0), jnp.zeros((1, 2, 2), int))) < 1e-6


def test_bce_dice_is_weighted_sum():
  logits = jnp.array([0.3, -0.2, 1.0, -2.0]).reshape(1, 2, 2, 1)
  labels = jnp.array([1, 0, 1, 0]).reshape(1, 2, 2)
  np.testing.assert_allclose(
    losses.bce_dice(logits, labels),
    0.5 * losses.bce(logits, labels) + losses.dice(logits, labels),
    rtol=1e-6,
  )


def test_channel_checks_and_unknown_name():
  with pytest.raises(ValueError, match="needs 1 output channel"):
    losses.bce(jnp.zeros((1, 2, 2, 3)), jnp.zeros((1, 2, 2), int))
  with pytest.raises(ValueError, match=">= 2 output channels"):
    losses.softmax_ce(jnp.zeros((1, 2, 2, 1)), jnp.zeros((1, 2, 2), int))
  with pytest.raises(ValueError, match="Unknown loss name 'focal'"):
    losses.get_loss("focal")
