"""``synthetic_nerve``: the built-in dataset, generated procedurally (no download).

Ultrasound-like images of a small nerve (1–3% of the image) among anatomical
landmarks and distractors (see :mod:`jaxseg.data.nerve_render`). Deterministic in
``seed``; image ``i`` of a split is rendered from ``fold_in(fold_in(seed, split), i)``
and belongs to site ``i % num_sites``.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from jaxseg.data import SPLITS, records
from jaxseg.data.nerve_render import render, site_params
from jaxseg.errors import UserError

CHUNK = 64  # images rendered per compiled call


@dataclasses.dataclass(frozen=True)
class Settings:
  """Generator knobs (``config.data.kwargs``).

  Attributes:
    image_size: side length in pixels.
    num_train, num_validation, num_test: images per split.
    difficulty: 0..1; more speckle and distractors, lower nerve contrast.
    num_sites: acquisition sites with their own gain/contrast/speckle.
    num_annotators: jittered masks per image (``annotators``); ``mask`` is the truth.
    annotator_jitter: relative std of the annotators' boundary jitter.
    seed: generator seed.
  """

  image_size: int = 128
  num_train: int = 512
  num_validation: int = 64
  num_test: int = 128
  difficulty: float = 0.5
  num_sites: int = 1
  num_annotators: int = 1
  annotator_jitter: float = 0.06
  seed: int = 0

  def split_sizes(self) -> dict[str, int]:
    return dict(train=self.num_train, validation=self.num_validation, test=self.num_test)


class SyntheticNerve(records.Prepared, tfds.core.GeneratorBasedBuilder):
  """TFDS builder; one ``BuilderConfig`` per distinct :class:`Settings`."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, settings: Settings, **kwargs):
    self.settings = settings
    name = f"s{settings.image_size}_{records.settings_hash(dataclasses.asdict(settings))}"
    super().__init__(config=tfds.core.BuilderConfig(name=name), **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.settings
    return self.dataset_info_from_configs(
      description="Procedural ultrasound-like nerve images (jaxseg).",
      features=records.features(s.image_size, s.image_size, 1, s.num_annotators),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {
      split: self._generate_examples(split)
      for split, n in self.settings.split_sizes().items()
      if n > 0
    }

  def _generate_examples(self, split: str):
    s = self.settings
    key = jax.random.fold_in(jax.random.key(s.seed), SPLITS.index(split))
    sites = site_params(jax.random.fold_in(jax.random.key(s.seed), 1_000_003), s.num_sites)
    total = s.split_sizes()[split]
    for start in range(0, total, CHUNK):
      index = jnp.arange(start, start + CHUNK)
      keys = jax.vmap(jax.random.fold_in, (None, 0))(key, index)
      img, mask, ann = jax.device_get(
        render(
          keys,
          sites[index % s.num_sites],
          s.image_size,
          s.difficulty,
          s.num_annotators,
          s.annotator_jitter,
        )
      )
      for j in range(min(CHUNK, total - start)):
        i = start + j
        yield (
          i,
          {
            "image": np.round(img[j] * 255).astype(np.uint8)[..., None],
            "mask": mask[j].astype(np.uint8),
            "annotators": ann[j].astype(np.uint8),
            "site": np.int32(i % s.num_sites),
          },
        )


def make_builder(*, source_dir, data_dir, **kwargs) -> SyntheticNerve:
  """Builder for ``Settings(**kwargs)``; ``source_dir`` must be unset (no source)."""
  if source_dir:
    raise UserError(
      f"dataset 'synthetic_nerve' is generated, not read: config.data.dir "
      f"must be empty, found {source_dir!r}."
    )
  return SyntheticNerve(
    settings=records.settings(Settings, kwargs, "synthetic_nerve"), data_dir=data_dir
  )
