"""Real-data configs run end to end, and `jaxseg predict` tiles a 512x512 ISBI image."""

import os

import jax
import numpy as np
from PIL import Image

from configs import segformer_covid_ct, unet_isbi2012
from jaxseg import infer, main
from jaxseg.run import evaluators, predict

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def test_isbi_smoke_train_eval_predict(tmp_path):
  config = unet_isbi2012.get_config("smoke")
  config.data.dir = f"{SHARED}/isbi2012"
  config.train.update(steps=2, eval_every=2)
  workdir = str(tmp_path / "run")
  main.train(config, workdir)
  result = main.evaluate(workdir)
  assert {"rand_error", "warping_error", "pixel_error", "dice"} <= set(result)
  image_path = f"{SHARED}/isbi2012/test/0.png"
  (mask_path,) = predict.run([workdir], image_path, str(tmp_path / "pred"))
  mask = np.asarray(Image.open(mask_path))
  assert mask.shape == (512, 512) and set(np.unique(mask)) <= {0, 255}
  assert os.path.exists(tmp_path / "pred" / "0_overlay.png")
  # Tile by tile (284-px tiles) equals one pass over the whole mirrored image.
  exp, variables, _ = evaluators.restore(workdir, splits=())
  fn = infer.make_predict_fn(exp.model, variables)
  image = np.asarray(Image.open(image_path), np.float32)[..., None] / 255.0
  whole = np.asarray(jax.jit(fn)(np.pad(image, ((92, 96), (92, 96), (0, 0)), "symmetric")[None]))
  expected = infer.labels_of(whole[0, :512, :512]) * 255
  np.testing.assert_array_equal(mask, expected)


def test_covid_ct_smoke_with_segformer(tmp_path):
  """``configs/segformer_covid_ct.py`` is ``unet_covid_ct.py`` with SegFormer: one run
  covers the configs' data path and the transformer's training and evaluation (the
  U-Net trains on COVID-19 CT in the augmentation study's sweep test)."""
  config = segformer_covid_ct.get_config("smoke")
  config.data.dir = f"{SHARED}/covid_ct"
  config.train.update(steps=2, eval_every=2)
  state = main.train(config, str(tmp_path))
  assert int(state.step) == config.train.steps
  result = main.evaluate(str(tmp_path))
  assert result["cases"] == 48 and 0.0 <= result["dice"]["mean"] <= 1.0
