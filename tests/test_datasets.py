"""Directory-based datasets: the real copies in ../shared/data, layouts, bad input."""

import dataclasses
import json
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import unet_synthetic
from jaxseg import main
from jaxseg.data import image_folder, pipeline
from jaxseg.errors import UserError
from jaxseg.run import predict
from jaxseg.run.experiment import Experiment

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def _config(name, directory, folds=0, **kwargs):
  """The data config every experiment starts from, on dataset ``name``."""
  config = unet_synthetic.get_config().data
  config.update(name=name, dir=str(directory), folds=folds, fold=0)
  config.update(validation_fraction=0.2, test_fraction=0.2)
  config.kwargs = ml_collections.ConfigDict(kwargs)
  return config


def _listing(directory):
  return sorted(os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs)


def test_isbi2012_png_and_folds():
  sources = pipeline.load_splits(
    _config("isbi2012", f"{SHARED}/isbi2012", folds=5),
    splits=("train", "validation", "test", "unlabeled"),
  )
  assert {k: len(v) for k, v in sources.items()} == {
    "train": 19,
    "validation": 5,
    "test": 6,
    "unlabeled": 30,
  }
  example = sources["train"][0]
  assert example["image"].shape == (512, 512, 1)
  assert set(np.unique(example["mask"])) == {0, 1}
  # Membranes (class 0) are the minority, about a fifth of the pixels (SOURCE.md).
  assert 0.1 < 1 - example["mask"].mean() < 0.35


def test_isbi2012_multipage_tif(tmp_path):
  import tifffile

  images = np.stack(
    [np.asarray(Image.open(f"{SHARED}/isbi2012/train/image/{i}.png"))[:64, :64] for i in range(3)]
  )
  labels = np.stack(
    [np.asarray(Image.open(f"{SHARED}/isbi2012/train/label/{i}.png"))[:64, :64] for i in range(3)]
  )
  tifffile.imwrite(tmp_path / "train-volume.tif", images)
  tifffile.imwrite(tmp_path / "train-labels.tif", labels)
  config = _config("isbi2012", tmp_path)
  config.validation_fraction = config.test_fraction = 0.34
  sources = pipeline.load_splits(config)
  assert sum(len(s) for s in sources.values()) == 3
  np.testing.assert_array_equal(
    np.sort([sources["train"][0]["mask"].sum()]), [(labels[sources["train"].indices[0]] > 0).sum()]
  )


def test_covid_ct_binary_and_multiclass():
  binary = pipeline.load_splits(_config("covid_ct_lesion", f"{SHARED}/covid_ct", image_size=32))
  assert len(binary["train"]) + len(binary["validation"]) == 50 and len(binary["test"]) == 48
  assert binary["test"][0]["image"].shape == (32, 32, 1)
  values = set().union(*(np.unique(binary["train"][i]["mask"]).tolist() for i in range(10)))
  assert values == {0, 1}
  multi = pipeline.load_splits(
    _config("covid_ct_lesion", f"{SHARED}/covid_ct", image_size=32, variant="multiclass")
  )
  values = set().union(*(np.unique(multi["train"][i]["mask"]).tolist() for i in range(20)))
  assert values == {0, 1, 2}


def test_covid_ct_nifti_volumes(tmp_path):
  import nibabel

  rng = np.random.default_rng(0)
  volume = rng.uniform(-1200, 200, (40, 40, 5)).astype(np.int16)
  mask = np.zeros((40, 40, 5), np.uint8)
  mask[5:15, 5:15, :] = 1
  mask[20:25, 20:25, 2] = 2
  mask[30:33, 30:33, 3] = 3  # pleural effusion: background for lesion segmentation
  for name, data in (("tr_im.nii.gz", volume), ("tr_mask.nii.gz", mask)):
    nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), tmp_path / name)
  config = _config("covid_ct_lesion", tmp_path, image_size=40, variant="multiclass")
  config.validation_fraction = config.test_fraction = 0.2
  sources = pipeline.load_splits(config)
  assert sum(len(s) for s in sources.values()) == 5
  everything = [s[i] for s in sources.values() for i in range(len(s))]
  assert {int(e["mask"].max()) for e in everything} == {1, 2}
  assert all(e["mask"][31, 31] == 0 for e in everything)


def test_lidc_split_by_patient():
  sources = pipeline.load_splits(_config("lidc_multirater", f"{SHARED}/lidc_multirater"))
  assert sum(len(s) for s in sources.values()) == 1041
  example = sources["test"][0]
  assert example["annotators"].shape == (4, 128, 128) and example["image"].shape == (128, 128, 1)
  majority = (example["annotators"].sum(0) >= 2).astype(np.uint8)
  np.testing.assert_array_equal(example["mask"], majority)


def _write_pair(root, stem, image, mask, image_ext=".png", mask_ext=".png"):
  os.makedirs(root / "images", exist_ok=True)
  os.makedirs(root / "masks", exist_ok=True)
  Image.fromarray(image).save(root / "images" / f"{stem}{image_ext}")
  Image.fromarray(mask).save(root / "masks" / f"{stem}{mask_ext}", quality=75)


def test_image_folder_mapping_resize_pad_and_cache(tmp_path):
  rng = np.random.default_rng(0)
  for i in range(5):
    mask = np.zeros((20, 30), np.uint8)
    if i:  # one empty mask
      mask[5:12, 8:20] = 255
    _write_pair(tmp_path, f"case{i}", rng.integers(0, 255, (20, 30), np.uint8), mask)
  before = _listing(tmp_path)
  config = _config("image_folder", tmp_path, image_size=(16, 16))
  sources = pipeline.load_splits(config)
  assert sum(len(s) for s in sources.values()) == 5
  assert sources["train"][0]["image"].shape == (16, 16, 1)
  padded = pipeline.load_splits(
    _config("image_folder", tmp_path, image_size=(24, 32), resize_mode="pad")
  )
  example = padded["train"][0]
  assert example["image"].shape == (24, 32, 1) and example["mask"][20:].sum() == 0
  assert _listing(tmp_path) == before  # nothing written into the user's directory
  # Editing a source file prepares the data anew (the cache key hashes the files).
  cache = os.path.join(os.environ["JAXSEG_CACHE"], "tfds", "image_folder")
  folders = set(os.listdir(cache))
  _write_pair(
    tmp_path, "case0", rng.integers(0, 255, (20, 30), np.uint8), np.zeros((20, 30), np.uint8)
  )
  pipeline.load_splits(config)
  assert len(set(os.listdir(cache)) - folders) == 1


def test_image_folder_jpeg_masks_need_a_threshold(tmp_path):
  mask = np.zeros((32, 32), np.uint8)
  mask[5:19, 7:22] = 255  # not aligned with JPEG's 8x8 blocks: ringing
  for i in range(5):
    _write_pair(tmp_path, f"c{i}", mask, mask, ".jpg", ".jpg")
  jpeg_hint = r"masks/c\d\.jpg: mask values .* not in the mapping.*JPEG.*mask_threshold"
  binary = ((0, 0), (255, 1))
  with pytest.raises(ValueError, match=jpeg_hint):
    pipeline.load_splits(_config("image_folder", tmp_path, image_size=(32, 32), mask_values=binary))
  for given in ({"mask_values": binary, "mask_threshold": 60}, {}):  # given, or chosen (auto)
    sources = pipeline.load_splits(_config("image_folder", tmp_path, image_size=(32, 32), **given))
    np.testing.assert_array_equal(sources["train"][0]["mask"], mask > 0)


def test_image_folder_reads_masks_as_they_look(tmp_path):
  """1-bit, 8-bit gray and gray RGB masks of one folder: all black/white {0, 255}."""
  mask = np.zeros((16, 16), np.uint8)
  mask[4:10, 3:12] = 255
  modes = {"bit": mask > 0, "gray": mask, "rgb": np.stack([mask] * 3, -1)}
  for stem, pixels in modes.items():
    _write_pair(tmp_path, stem, mask, pixels)
  assert Image.open(tmp_path / "masks" / "bit.png").mode == "1"
  _write_pair(tmp_path, "gray2", mask, mask)
  _write_pair(tmp_path, "gray3", mask, mask)
  sources = pipeline.load_splits(_config("image_folder", tmp_path, image_size=(16, 16)))
  examples = [e for s in sources.values() for e in (s[i] for i in range(len(s)))]
  assert len(examples) == 5
  for example in examples:
    np.testing.assert_array_equal(example["mask"], mask > 0)
  colour = np.stack([mask, np.zeros_like(mask), mask], -1)
  _write_pair(tmp_path, "colour", mask, colour)
  with pytest.raises(ValueError, match=r"masks/colour.png: a colour mask \(mode RGB"):
    pipeline.load_splits(_config("image_folder", tmp_path, image_size=(16, 16)))


@pytest.mark.parametrize(
  "problem", ["unmatched", "size", "unreadable", "value", "nonfinite", "missing"]
)
def test_image_folder_bad_input_names_the_file(tmp_path, problem):
  image, mask = np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)
  for i in range(3):
    _write_pair(tmp_path, f"ok{i}", image, mask)
  if problem == "unmatched":
    _write_pair(tmp_path, "lonely", image, mask)
    os.remove(tmp_path / "masks" / "lonely.png")
    pattern = r"images without a mask: \['lonely'\]"
  elif problem == "size":
    _write_pair(tmp_path, "bad", image, np.zeros((6, 8), np.uint8))
    pattern = r"bad.png: mask size \(6, 8\) does not match image size \(8, 8\)"
  elif problem == "unreadable":
    _write_pair(tmp_path, "bad", image, mask)
    (tmp_path / "images" / "bad.png").write_bytes(b"not a png")
    pattern = r"images/bad.png: cannot read the image"
  elif problem == "nonfinite":  # a float TIFF with an Inf pixel
    _write_pair(tmp_path, "bad", image, mask)
    os.remove(tmp_path / "images" / "bad.png")
    pixels = np.zeros((8, 8), np.float32)
    pixels[3, 4] = np.inf
    Image.fromarray(pixels, mode="F").save(tmp_path / "images" / "bad.tif")
    pattern = r"images/bad.tif: 1 non-finite pixel value"
  elif problem == "value":
    _write_pair(tmp_path, "bad", image, np.full((8, 8), 7, np.uint8))
    pattern = r"masks/bad.png: mask values \[7\] are not in the mapping"
  else:
    tmp_path = tmp_path / "nowhere"
    pattern = "data directory .*nowhere.* does not exist"
  binary = ((0, 0), (255, 1)) if problem == "value" else "auto"  # auto: {0, 7} is binary
  with pytest.raises((ValueError, FileNotFoundError), match=pattern):
    pipeline.load_splits(_config("image_folder", tmp_path, image_size=(8, 8), mask_values=binary))


def test_every_problem_of_a_folder_is_reported_at_once(tmp_path):
  image, mask = np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)
  for i in range(3):
    _write_pair(tmp_path, f"ok{i}", image, mask)
  _write_pair(tmp_path, "short", image, np.zeros((6, 8), np.uint8))
  _write_pair(tmp_path, "broken", image, mask)
  (tmp_path / "masks" / "broken.png").write_bytes(b"not a png")
  _write_pair(tmp_path, "lonely", image, mask)
  os.remove(tmp_path / "masks" / "lonely.png")
  with pytest.raises(UserError, match="3 problem") as error:
    image_folder.resolve(str(tmp_path), {})
  for found in ("'lonely'", "short.png: mask size (6, 8)", "broken.png: cannot read the mask"):
    assert found in str(error.value)


def test_rgb_images_need_a_three_channel_model(tmp_path):
  """A model whose input channels disagree with the images is refused before training,
  naming both and the setting to change."""
  rng = np.random.default_rng(0)
  for i in range(5):
    image = rng.integers(0, 255, (16, 16, 3), np.uint8)
    _write_pair(tmp_path, f"rgb{i}", image, np.zeros((16, 16), np.uint8))
  config = unet_synthetic.get_config("smoke")
  config.data = _config("image_folder", tmp_path, image_size=(16, 16), channels=3)
  config.model.kwargs.update(widths=(4, 8), in_channels=1)
  refused = r"in_channels is 1 but the image_folder images have 3 channels.*in_channels=3"
  with pytest.raises(UserError, match=refused):
    Experiment(config, splits=("train",))
  del config.model.kwargs["in_channels"]  # unset: taken from the data
  assert Experiment(config, splits=("train",)).ctx.image_shape[-1] == 3


def test_unet_folder_config_needs_only_the_data_dir(tmp_path):
  from configs import unet_folder

  mask = np.zeros((40, 40), np.uint8)
  mask[10:30, 5:25] = 255
  for i in range(5):
    _write_pair(tmp_path, f"c{i}", mask, mask)
  config = unet_folder.get_config("smoke")
  config.data.dir = str(tmp_path)
  exp = Experiment(config)
  assert {k: len(v) for k, v in exp.sources.items()} == {"train": 3, "validation": 1, "test": 1}
  assert exp.sources["train"][0]["image"].shape == (64, 64, 1)
  assert dict(exp.config.data.kwargs.mask_values) == {0: 0, 255: 1}


def test_image_folder_merges_the_object_masks_of_an_image(tmp_path):
  """``case_mask.png`` + ``case_mask_1.png`` (one object each) -> their union."""
  image = np.zeros((16, 16), np.uint8)
  one, two = np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8)
  one[2:6, 2:6], two[9:14, 8:15] = 255, 255
  os.makedirs(tmp_path / "images")
  os.makedirs(tmp_path / "masks")
  for i in range(5):
    Image.fromarray(image).save(tmp_path / "images" / f"case{i}.png")
    Image.fromarray(one).save(tmp_path / "masks" / f"case{i}_mask.png")
  Image.fromarray(two).save(tmp_path / "masks" / "case3_mask_1.png")
  with pytest.raises(UserError, match=r"masks without an image: \['case0_mask'"):
    pipeline.load_splits(_config("image_folder", tmp_path, image_size=(16, 16)))
  config = _config("image_folder", tmp_path, image_size=(16, 16), mask_suffixes=("_mask",))
  sources = pipeline.load_splits(config)
  masks = sorted(
    (s[i]["mask"] for s in sources.values() for i in range(len(s))), key=lambda m: int(m.sum())
  )
  assert [int(m.sum()) for m in masks] == [16, 16, 16, 16, 16 + 35]
  np.testing.assert_array_equal(masks[-1], (one > 0) | (two > 0))


def test_predicted_masks_are_written_in_the_datasets_own_encoding():
  encoding = predict.mask_encoding
  palette = _config("image_folder", "", mask_values=((0, 0), (128, 1), (255, 2)))
  np.testing.assert_array_equal(encoding(palette, 3), [0, 128, 255])
  default = _config("image_folder", "", **dataclasses.asdict(image_folder.Settings()))
  np.testing.assert_array_equal(encoding(default, 1), [0, 255])  # binary: one logit
  binary = _config("image_folder", "", mask_values=((0, 0), (1, 1)))
  np.testing.assert_array_equal(encoding(binary, 1), [0, 1])
  # Two values of one class (0 and 10 both background): the smallest is written.
  merged = _config("image_folder", "", mask_values=((10, 0), (0, 0), (200, 1)))
  np.testing.assert_array_equal(encoding(merged, 2), [0, 200])
  np.testing.assert_array_equal(encoding(_config("isbi2012", ""), 2), [0, 255])
  np.testing.assert_array_equal(encoding(_config("covid_ct_lesion", ""), 4), [0, 1, 2, 3])


COVID = f"{SHARED}/covid_ct"


def _covid_pairs(count, multiclass=False):
  """``count`` real COVID-19 CT slices (JPEG, several sizes) with their masks: binary
  PNGs {0, 255}, or palette PNGs {0, 1, 2} (ground-glass, consolidation)."""
  base = "TrainingSet/MultiClassInfection-Train" if multiclass else "TestingSet/LungInfection-Test"
  stems = sorted(os.listdir(f"{COVID}/{base}/GT"))[:count]
  for stem in stems:
    image = Image.open(f"{COVID}/{base}/Imgs/{stem[:-4]}.jpg")
    yield stem[:-4], image, Image.open(f"{COVID}/{base}/GT/{stem}")


def _folder(root, kind):
  """A folder of 6 real pairs in one of the encodings users bring."""
  os.makedirs(root / "images")
  os.makedirs(root / "masks")
  for i, (stem, image, mask) in enumerate(_covid_pairs(6, multiclass=kind == "palette")):
    if kind in ("rgb", "mixed_images") and (kind == "rgb" or i % 3):
      tint = np.asarray(image.convert("RGB")) * np.array([1.0, 0.9, 0.8])
      image = Image.fromarray(tint.astype(np.uint8))
    image.save(root / "images" / f"{stem}.png")
    if kind == "mixed_masks":  # 1-bit, 8-bit gray and gray RGB masks in one folder
      mask = [mask.convert("1"), mask, mask.convert("RGB")][i % 3]
    mask.save(root / "masks" / f"{stem}{'.jpg' if kind == 'jpeg' else '.png'}", quality=75)


@pytest.mark.parametrize(
  "kind, mapping, channels, classes",
  [
    ("mixed_masks", {0: 0, 255: 1}, 1, 1),
    ("jpeg", {0: 0, 255: 1}, 1, 1),
    ("palette", {0: 0, 1: 1, 2: 2}, 1, 3),
    ("rgb", {0: 0, 255: 1}, 3, 1),
    ("mixed_images", {0: 0, 255: 1}, 3, 1),
  ],
)
def test_unet_folder_takes_encoding_channels_classes_and_size_from_the_data(
  tmp_path, capsys, kind, mapping, channels, classes
):
  """configs/unet_folder.py with only the folder: the mask mapping (and JPEG
  threshold), the channel count most images have, the model's channels and classes,
  and the image size are chosen from the data and noted."""
  from configs import unet_folder

  _folder(tmp_path, kind)
  config = unet_folder.get_config()
  config.data.dir = str(tmp_path)
  exp = Experiment(config, splits=("train",))
  kwargs, model = exp.config.data.kwargs, exp.model.interface
  assert dict(kwargs.mask_values) == mapping
  assert (kwargs.mask_threshold > 0) == (kind == "jpeg")
  assert kwargs.channels == channels and model.in_channels == channels
  assert model.num_classes == classes
  # Median of the slices' sizes (about 360 x 370), rounded to the U-Net's stride 16.
  assert all(v % 16 == 0 and 320 <= v <= 448 for v in kwargs.image_size)
  assert exp.sources["train"][0]["image"].shape == (*kwargs.image_size, channels)
  text = " ".join(exp.notes)
  assert "mask values:" in text and "channels:" in text and "image size:" in text
  if kind == "mixed_images":
    assert "2 gray and 4 colour images" in text
  labels = exp.sources["train"].take(np.arange(len(exp.sources["train"])), ("mask",))["mask"]
  assert set(np.unique(labels)) <= set(range(max(classes, 2))) and labels.max() > 0
  if kind in ("palette", "mixed_images"):  # and the smoke run trains with nothing else set
    smoke = unet_folder.get_config("smoke")
    smoke.data.dir = str(tmp_path)
    main.train(smoke, str(tmp_path / "run"))
    printed = capsys.readouterr().out
    assert "mask values:" in printed and "channels:" in printed and "model:" in printed
    assert main.evaluate(str(tmp_path / "run"))["cases"] == 1


def test_ambiguous_masks_are_refused_naming_the_settings(tmp_path):
  rng = np.random.default_rng(0)
  for i in range(3):  # gray "masks" that are really images
    _write_pair(
      tmp_path, f"c{i}", np.zeros((16, 16), np.uint8), rng.integers(0, 255, (16, 16), np.uint8)
    )
  config = unet_synthetic.get_config("smoke")
  config.data = _config("image_folder", tmp_path)
  with pytest.raises(UserError, match=r"ambiguous.*mask_values.*mask_threshold"):
    Experiment(config, splits=("train",))


@pytest.mark.parametrize(
  "config_arg, data",
  [
    ("unet_isbi2012.py:smoke", "isbi2012"),
    ("unet_covid_ct.py:smoke", "covid_ct"),
    ("prob_unet_lidc.py:smoke", "lidc_multirater"),
  ],
)
def test_inspect_prints_the_fingerprint_of_every_2d_dataset(config_arg, data, tmp_path, capsys):
  """``jaxseg inspect`` on the real data in ../shared/data: per split cases, shape,
  empty masks, foreground and class fractions; the settings; dataset.md beside the
  prepared data."""
  from jaxseg.run import fingerprint

  name, arg = config_arg.split(":")
  config = __import__(f"configs.{name[:-3]}", fromlist=["get_config"]).get_config(arg)
  config.data.dir = f"{SHARED}/{data}"
  config.data.weight_map.w0 = 0.0
  out = tmp_path / "fingerprint.json"
  fingerprint.run(config, str(out))
  report = json.loads(out.read_text())
  assert {"train", "validation", "test"} <= set(report["splits"])  # isbi2012: + unlabeled
  # Each split's numbers are those of the masks a training run of this config reads.
  for name, source in pipeline.load_splits(config.data).items():
    split, masks = report["splits"][name], source.take(np.arange(len(source)), ("mask",))["mask"]
    foreground = (masks > 0).mean(axis=(1, 2))
    assert split["cases"] == len(masks) > 0
    assert split["image_shape"][:2] == list(masks.shape[1:3])
    assert split["empty_masks"] == pytest.approx(np.mean(foreground == 0))
    assert split["foreground_per_image"]["mean"] == pytest.approx(foreground.mean())
    assert 1 - split["class_fractions"].get("0", 0.0) == pytest.approx(foreground.mean())
  text = capsys.readouterr().out
  assert "| split | cases | image (H, W, C) |" in text and "model.in_channels" in text


def test_inspect_lists_the_source_files_of_a_folder(tmp_path):
  from configs import unet_folder
  from jaxseg.run import fingerprint

  _folder(tmp_path / "data", "mixed_images")
  config = unet_folder.get_config("smoke")
  config.data.dir = str(tmp_path / "data")
  report = fingerprint.run(config)
  files = report["files"]
  assert files["train"]["images"] == 6 and files["train"]["colour"] == 4
  assert files["masks"]["values"] == [0, 255] and not files["masks"]["lossy"]
  assert files["train"]["height"]["min"] < files["train"]["height"]["max"]  # several sizes


def test_unlabeled_images_join_the_unlabeled_pools(tmp_path):
  """``unlabeled/`` beside ``images/`` + ``masks/``: a semi-supervised method's unlabeled
  stream and the federated clients' unlabeled images hold them too."""
  from configs import fed_common
  from jaxseg.run import federated, feed

  _folder(tmp_path, "mixed_masks")
  os.makedirs(tmp_path / "unlabeled")
  for stem, image, _ in _covid_pairs(4, multiclass=True):
    image.save(tmp_path / "unlabeled" / f"u{stem}.png")
  config = fed_common.fed_config("cps", "synthetic_smoke")
  config.data = _config("image_folder", tmp_path, image_size=(32, 32))
  config.model.kwargs.widths = (4, 8)
  config.method.labeled_fraction = 0.5
  exp = Experiment(config)
  train = len(exp.sources["train"])
  assert len(exp.sources["unlabeled"]) == 4
  assert not exp.sources["unlabeled"].take(np.arange(4), ("mask",))["mask"].any()
  assert len(feed.streams(exp)["unlabeled"].source) == train - round(train / 2) + 4
  where, *_ = federated.client_layout(exp, 1)
  extra = set(range(train, train + 4))
  assert set(np.concatenate(where.unlabeled)) & extra == extra
  assert not set(np.concatenate(where.labeled)) & extra
