"""Input pipeline: prepared TFDS splits read through grain, without TensorFlow.

Training batches come from a ``grain.DataLoader`` (seeded shuffling, infinite epochs,
batching, iterator state that checkpoints and resumes exactly). Evaluation iterates a
split in order in fixed-size batches; the last one is padded and carries a ``valid``
flag, so the compiled evaluation step sees a single shape.
"""

from collections.abc import Iterator

import grain
import numpy as np
import tensorflow_datasets as tfds

from jaxseg import data as datasets


def load_splits(data_config, splits=datasets.SPLITS) -> dict:
  """Prepares (once, cached) and opens ``splits`` of ``data_config.name``.

  Raises if a requested split has no examples.
  """
  builder = datasets.make_builder(
    data_config.name,
    source_dir=data_config.dir,
    cache_dir=data_config.cache_dir,
    **data_config.kwargs,
  )
  tfds.disable_progress_bar()
  builder.download_and_prepare(file_format="array_record")
  sources = {}
  for split in splits:
    size = builder.info.splits[split].num_examples if split in builder.info.splits else 0
    if size == 0:
      raise ValueError(
        f"dataset {data_config.name!r}: split {split!r} has no examples (check config.data.kwargs)."
      )
    sources[split] = builder.as_data_source(split)
  return sources


class ToModelInputs(grain.transforms.Map):
  """uint8 record -> float32 image in [0, 1] and int32 labels."""

  def map(self, record):
    return {
      "image": record["image"].astype(np.float32) / 255.0,
      "labels": record["mask"].astype(np.int32),
    }


def train_loader(source, batch_size: int, seed: int) -> grain.DataLoader:
  """Infinite, seeded, shuffled batches of ``batch_size`` (last partial batch dropped)."""
  if len(source) < batch_size:
    raise ValueError(
      f"training split has {len(source)} examples, fewer than one batch "
      f"of {batch_size}; lower config.train.batch_size."
    )
  sampler = grain.samplers.IndexSampler(
    num_records=len(source),
    shuffle=True,
    seed=seed,
    num_epochs=None,
    shard_options=grain.sharding.NoSharding(),
  )
  return grain.DataLoader(
    data_source=source,
    sampler=sampler,
    worker_count=0,
    operations=[ToModelInputs(), grain.transforms.Batch(batch_size, drop_remainder=True)],
  )


def eval_batches(source, batch_size: int) -> Iterator[dict]:
  """All examples in order, in batches of ``batch_size``, padded, with ``valid``."""
  to_inputs = ToModelInputs()
  for start in range(0, len(source), batch_size):
    items = [to_inputs.map(source[i]) for i in range(start, min(start + batch_size, len(source)))]
    valid = np.zeros(batch_size, bool)
    valid[: len(items)] = True
    items += [items[-1]] * (batch_size - len(items))
    batch = {k: np.stack([item[k] for item in items]) for k in items[0]}
    batch["valid"] = valid
    yield batch
