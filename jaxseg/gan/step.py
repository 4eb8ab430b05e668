"""Pure, jit-able GAN training and generation for any :class:`~jaxseg.gan.networks.Spec`.

One step alternates the two players, as pix2pix does: the generator makes a batch
once; the discriminator takes a step on ``½ (BCE(D(c, real), 1) + BCE(D(c, fake), 0))``;
then the generator takes a step on ``BCE(D'(c, fake), 1) + λ |fake - real|`` judged
by the *updated* discriminator, its gradient pulled back through the one generator
pass (``jax.vjp``). Each player has its own optimizer state.
"""

import jax
import jax.numpy as jnp
import optax

from jaxseg.data import augment
from jaxseg.gan.networks import Spec
from jaxseg.train import state as state_lib
from jaxseg.train.step import apply_grads


def _bce(logits, target: float):
  return optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, target)).mean()


def example_batch(image_shape: tuple) -> dict:
  """A zero batch of one example, for initialisation."""
  return {"image": jnp.zeros((1, *image_shape)), "labels": jnp.zeros((1, *image_shape[:2]), int)}


def init(spec: Spec, tx, key: jax.Array, image_shape: tuple) -> state_lib.State:
  """Both networks and their optimizer states (``tx`` serves both players)."""
  kg, kd = jax.random.split(key)
  batch = example_batch(image_shape)
  cond = spec.condition(batch)
  g = spec.generator.init({"params": kg, "dropout": kg}, cond, spec.noise(kg, 1))
  d = spec.discriminator.init(kd, jnp.concatenate([cond, spec.real(batch)], -1))
  return state_lib.start(
    {"generator": state_lib.make_net(g, tx), "discriminator": state_lib.make_net(d, tx)}
  )


def generator_variables(state: state_lib.State) -> dict:
  return state_lib.variables(state.nets["generator"])


def make_train_step(spec: Spec, tx, augmentations):
  """``train_step(state, batch, key) -> (state, metrics)``; randomness folds in the step."""

  def train_step(state: state_lib.State, batch: dict, key: jax.Array):
    aug_key, dropout_key, z_key = jax.random.split(jax.random.fold_in(key, state.step), 3)
    batch = augment.apply(augmentations, aug_key, batch)
    cond, real = spec.condition(batch), spec.real(batch)
    g, d = state.nets["generator"], state.nets["discriminator"]

    def generate(params):
      fake, updates = spec.generator.apply(
        {"params": params, "batch_stats": g.batch_stats},
        cond,
        spec.noise(z_key, cond.shape[0]),
        train=True,
        rngs={"dropout": dropout_key},
        mutable=["batch_stats"],
      )
      return fake, updates["batch_stats"]

    fake, pull_back, g_stats = jax.vjp(generate, g.params, has_aux=True)

    def critic(params, stats, candidate):
      logits, updates = spec.discriminator.apply(
        {"params": params, "batch_stats": stats},
        jnp.concatenate([cond, candidate], -1),
        train=True,
        mutable=["batch_stats"],
      )
      return logits, updates["batch_stats"]

    def d_loss(params):
      real_logits, stats = critic(params, d.batch_stats, real)
      fake_logits, stats = critic(params, stats, jax.lax.stop_gradient(fake))
      loss = 0.5 * (_bce(real_logits, 1.0) + _bce(fake_logits, 0.0))
      return loss, (stats, jax.nn.sigmoid(real_logits).mean(), jax.nn.sigmoid(fake_logits).mean())

    (loss_d, (d_stats, d_real, d_fake)), d_grads = jax.value_and_grad(d_loss, has_aux=True)(
      d.params
    )
    d = apply_grads(tx, d, d_grads, d_stats)

    def g_loss(generated):
      logits, _ = critic(d.params, d.batch_stats, generated)
      adversarial, l1 = _bce(logits, 1.0), jnp.abs(generated - real).mean()
      return adversarial + spec.l1_weight * l1, (adversarial, l1)

    (loss_g, (adversarial, l1)), fake_grad = jax.value_and_grad(g_loss, has_aux=True)(fake)
    (g_grads,) = pull_back(fake_grad)
    nets = {"generator": apply_grads(tx, g, g_grads, g_stats), "discriminator": d}
    metrics = dict(loss=loss_g, d_loss=loss_d, g_adversarial=adversarial, l1=l1)
    return state.replace(step=state.step + 1, nets=nets), {
      **metrics,
      "d_real": d_real,
      "d_fake": d_fake,
    }

  return train_step


def make_generate(spec: Spec):
  """``generate(generator_variables, batch, key) -> {image [0, 1], labels}``.

  As pix2pix at test time: dropout stays on (the noise) and BatchNorm normalises with
  the statistics of the batch being generated.
  """

  def generate(variables: dict, batch: dict, key: jax.Array) -> dict:
    dropout_key, z_key = jax.random.split(key)
    cond = spec.condition(batch)
    fake, _ = spec.generator.apply(
      variables,
      cond,
      spec.noise(z_key, cond.shape[0]),
      train=True,
      rngs={"dropout": dropout_key},
      mutable=["batch_stats"],
    )
    return spec.decode(fake, batch)

  return generate
