"""Shared fixtures: a private dataset cache and one tiny config for training tests."""

import os

import pytest


# Prepared datasets go to a per-session folder, never to the user's cache.
@pytest.fixture(scope="session", autouse=True)
def _dataset_cache(tmp_path_factory):
  os.environ["JAXSEG_CACHE"] = str(tmp_path_factory.mktemp("jaxseg_cache"))
  yield


# Tests that build the same computation again (a resumed run, a second experiment)
# load it from JAX's persistent compilation cache instead of compiling it anew.
@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
  import jax

  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  yield


def make_tiny_config():
  """The smoke config shrunk further: 32 px, widths (4, 8), 6 steps."""
  from configs import unet_synthetic

  config = unet_synthetic.get_config("smoke")
  config.model.kwargs.widths = (4, 8)
  config.data.kwargs.update(num_train=16, num_validation=4, num_test=4)
  config.train.update(steps=6, eval_every=3, log_every=2)
  config.eval.batch_size = 4
  return config


@pytest.fixture
def tiny_config():
  return make_tiny_config()
