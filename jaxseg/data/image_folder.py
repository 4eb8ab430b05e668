"""``image_folder``: any ``images/`` + ``masks/`` pair of folders, matched by file stem.

``config.data.dir`` holds either ``images/`` and ``masks/`` (all in ``train``; the
validation and test splits are carved from it by ``config.data.validation_fraction``
and ``test_fraction``), or ``train/``, ``validation/``, ``test/`` subfolders, each with
``images/`` and ``masks/``. PNG, JPEG, TIF and BMP files. Empty masks are allowed.

Settings (``config.data.kwargs``; on the command line a tuple is given as a string,
``--config.data.kwargs.mask_values='((0, 0), (255, 1))'``):

* ``mask_values``: ``auto`` (default) derives the mapping pixel value -> class from
  the masks (:mod:`jaxseg.data.encodings`: two values are background/foreground, a
  few integers ``0..K-1`` are classes, lossy JPEG masks are snapped to their levels
  with a threshold it chooses), or an explicit mapping such as ``((0, 0), (255, 1))``;
  ``mask_threshold`` snaps values of lossy masks to the nearest mapped one (0: chosen
  with ``auto``, off otherwise);
* ``channels``: ``auto`` (default) reads every image with the channel count most
  images have (gray images expanded to RGB, RGB images whose channels agree read as
  gray), or 1 or 3;
* ``image_size`` ``(H, W)`` with ``resize_mode`` ``resize`` or ``pad`` brings every
  pair to one size; ``auto``: the median image size, the long side capped at
  :data:`MAX_AUTO_SIDE`, rounded to a multiple of the model's total stride;
* images without masks in ``unlabeled/`` beside the training ``images/`` and
  ``masks/`` form the ``unlabeled`` split: the semi-supervised and federated methods
  add them to their unlabeled images;
* ``mask_suffixes`` (e.g. ``("_mask",)``): masks are named ``<stem><suffix>`` and, for
  images with several objects in separate files, ``<stem><suffix>_<n>``
  (``case_mask.png``, ``case_mask_1.png``, …, as some public sets store them); all of
  an image's masks are merged by union (the larger class where they overlap).

Masks are read as they look: 1-bit as black/white (0/255), palette masks by index,
RGB masks whose channels agree as gray; a colour mask is refused. :func:`scan` reads
every file before anything is prepared and :func:`resolve` reports every problem at
once (unmatched stems, unreadable files, size mismatches), naming the files.
"""

import ast
import dataclasses
import os
import re

import numpy as np

from jaxseg.data import encodings, folder, records
from jaxseg.errors import UserError

AUTO = "auto"
UNLABELED = "unlabeled"
MAX_AUTO_SIDE = 512


@dataclasses.dataclass(frozen=True)
class Settings:
  """See the module docstring."""

  image_size: tuple | str = (256, 256)
  resize_mode: str = "resize"
  mask_values: tuple | str = AUTO
  mask_threshold: int = 0
  channels: int | str = AUTO
  mask_suffixes: tuple = ()


class ImageFolder(folder.FolderBuilder):
  pass


def _image_stem(mask_stem: str, suffixes: tuple) -> str:
  """The image a mask belongs to: its stem without ``<suffix>`` or ``<suffix>_<n>``."""
  for suffix in suffixes:
    found = re.fullmatch(rf"(.+){re.escape(suffix)}(_\d+)?", mask_stem)
    if found:
      return found.group(1)
  return mask_stem


def _split_dirs(root: str) -> dict[str, str]:
  if os.path.isdir(os.path.join(root, "images")):
    return {"train": root}
  dirs = {split: os.path.join(root, split) for split in ("train", "validation", "test")}
  return {split: d for split, d in dirs.items() if os.path.isdir(d)}


def _matched(base: str, suffixes: tuple) -> tuple[dict, list[str]]:
  """``({stem: (image, masks)}, problems)`` of one split folder."""
  images = folder.list_images(os.path.join(base, "images"))
  masks = {}
  for stem, path in folder.list_images(os.path.join(base, "masks")).items():
    masks.setdefault(_image_stem(stem, suffixes), []).append(path)
  only_images, only_masks = sorted(set(images) - set(masks)), sorted(set(masks) - set(images))
  problems = []
  if only_images or only_masks:
    how = f"file stem + one of {list(suffixes)}" if suffixes else "file stem"
    problems.append(
      f"{base}: unmatched files — images without a mask: {only_images}, masks without an "
      f"image: {only_masks} (matched by {how})"
    )
  return {s: (images[s], tuple(sorted(masks[s]))) for s in images if s in masks}, problems


@dataclasses.dataclass
class Scan:
  """What :func:`scan` found in a folder: per split the matched pairs; per image its
  size, mode and whether it is gray; the histogram of every mask value; problems."""

  pairs: dict  # split -> {stem: (image path, mask paths)}
  images: list = dataclasses.field(default_factory=list)  # {split, size, mode, gray}
  counts: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(256, np.int64))
  lossy: bool = False  # some mask is a JPEG file
  mask_modes: dict = dataclasses.field(default_factory=dict)  # PIL mode -> count
  problems: list = dataclasses.field(default_factory=list)


def _unlabeled(root: str) -> dict[str, str]:
  """``{stem: path}`` of the images without masks: ``unlabeled/`` beside the training
  ``images/`` and ``masks/``."""
  base = os.path.join(_split_dirs(root).get("train", root), UNLABELED)
  return folder.list_images(base) if os.path.isdir(base) else {}


def scan(root: str, suffixes: tuple = ()) -> Scan:
  """Reads every image and mask under ``root``; collects every problem instead of
  stopping at the first."""
  found = Scan(pairs={})
  for split, base in _split_dirs(root).items():
    found.pairs[split], problems = _matched(base, suffixes)
    found.problems += problems
    for image_path, mask_paths in found.pairs[split].values():
      _scan_pair(found, split, image_path, mask_paths)
  unlabeled = _unlabeled(root)
  if unlabeled:
    found.pairs[UNLABELED] = {stem: (path, ()) for stem, path in unlabeled.items()}
    for path in unlabeled.values():
      _scan_pair(found, UNLABELED, path, ())
  return found


def _scan_pair(found: Scan, split: str, image_path: str, mask_paths: tuple) -> None:
  try:
    size, mode, gray = folder.image_info(image_path)
  except UserError as e:
    found.problems.append(str(e))
    return
  found.images.append({"split": split, "size": size, "mode": mode, "gray": gray})
  for path in mask_paths:
    try:
      raw, mode, lossy = folder.mask_info(path)
    except UserError as e:
      found.problems.append(str(e))
      continue
    if raw.shape != size:
      found.problems.append(
        f"{path}: mask size {raw.shape} does not match image size {size} (height, width)"
      )
    counts = np.bincount(raw.ravel(), minlength=len(found.counts))
    found.counts = np.pad(found.counts, (0, len(counts) - len(found.counts))) + counts
    found.lossy |= lossy
    found.mask_modes[mode] = found.mask_modes.get(mode, 0) + 1


def _literal(value, key: str):
  """A setting given on the command line as a string (``'((0, 0), (255, 1))'``), read
  and checked against its form (:data:`FORMS`). A config whose default is a tuple
  turns a string override into a tuple of its characters (``auto`` -> ``('a', 'u',
  't', 'o')``): those are joined back first."""
  if isinstance(value, tuple | list) and value and all(isinstance(c, str) for c in value):
    value = "".join(value)
  read = value
  if isinstance(value, str) and value != AUTO:
    try:
      read = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      read = ValueError  # (not a literal)
  if read != AUTO and (read is ValueError or not FORMS[key][0](read)):
    raise UserError(
      f"config.data.kwargs.{key}: expected {AUTO!r} or {FORMS[key][1]}, found {value!r}."
    )
  return read


def _ints(value, count=None) -> bool:
  is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
  return (
    isinstance(value, tuple | list)
    and (count is None or len(value) == count)
    and all(is_int(v) for v in value)
  )


# Each literal setting's check and its form, as the error states it.
FORMS = {
  "image_size": (
    lambda v: v is None or _ints(v, 2) and min(v) > 0,
    "(height, width), e.g. '(256, 256)'",
  ),
  "mask_values": (
    lambda v: isinstance(v, tuple | list) and len(v) > 0 and all(_ints(p, 2) for p in v),
    "(value, class) pairs, e.g. '((0, 0), (255, 1))'",
  ),
  "channels": (lambda v: v in (1, 3) and not isinstance(v, bool), "1 or 3"),
}


def parse(kwargs: dict) -> Settings:
  s = records.settings(Settings, kwargs, "image_folder")
  return dataclasses.replace(
    s, **{k: _literal(getattr(s, k), k) for k in ("image_size", "mask_values", "channels")}
  )


def resolve(source_dir: str, kwargs: dict, stride: int = 1) -> tuple[dict, list[str]]:
  """``(settings, notes)``: ``kwargs`` with every ``auto`` replaced by what the folder
  says (see the module docstring), after every file was read; raises listing every
  problem found."""
  s = parse(kwargs)
  root = folder.require_dir(source_dir, "image_folder")
  found = scan(root, tuple(s.mask_suffixes))
  if found.problems:
    shown = "; ".join(found.problems[:20])
    more = f" (and {len(found.problems) - 20} more)" if len(found.problems) > 20 else ""
    raise UserError(f"image_folder {root}: {len(found.problems)} problem(s): {shown}{more}.")
  if not found.images:
    raise UserError(f"image_folder: no images/ + masks/ pairs found in {root!r}.")
  notes, resolved = [], {}
  if s.channels == AUTO:
    resolved["channels"], note = _channels(found.images)
    notes.append(note)
  if s.mask_values == AUTO:
    encoding = encodings.infer(found.counts, found.lossy)
    resolved["mask_values"] = encoding.mapping
    resolved["mask_threshold"] = s.mask_threshold or encoding.threshold
    notes.append(f"mask values: {encoding.text}")
  if s.image_size == AUTO:
    resolved["image_size"], note = _auto_size(found.images, stride)
    notes.append(note)
  return dataclasses.asdict(dataclasses.replace(s, **resolved)), notes


def _channels(images: list) -> tuple[int, str]:
  rgb = sum(not i["gray"] for i in images)
  channels = 3 if 2 * rgb > len(images) else 1
  equal = sum(i["gray"] and i["mode"] in ("RGB", "RGBA", "P") for i in images)
  read = "RGB (gray ones expanded)" if channels == 3 else "gray"
  note = f"channels: {len(images) - rgb} gray and {rgb} colour images"
  note += f" ({equal} RGB with equal channels counted as gray)" if equal else ""
  return channels, f"{note}: read as {read}, {channels} channel(s)"


def _auto_size(images: list, stride: int) -> tuple[tuple, str]:
  h, w = (float(np.median([i["size"][d] for i in images])) for d in (0, 1))
  scale = min(1.0, MAX_AUTO_SIDE / max(h, w))
  size = tuple(max(stride, round(v * scale / stride) * stride) for v in (h, w))
  note = (
    f"image size: median {h:g}x{w:g}, long side capped at {MAX_AUTO_SIDE}, multiple of "
    f"{stride}: every pair resized to {size[0]}x{size[1]}"
  )
  return size, note


def make_builder(*, source_dir, data_dir, **kwargs) -> ImageFolder:
  s = parse(kwargs)
  if AUTO in (s.mask_values, s.channels, s.image_size):  # not resolved by the caller
    s = parse(resolve(source_dir, kwargs)[0])
  root = folder.require_dir(source_dir, "image_folder")
  mapping = {int(k): int(v) for k, v in s.mask_values}
  size = tuple(s.image_size) if s.image_size else None

  def read(item):
    image = folder.read_image(item.files[0], s.channels)
    masks = [folder.read_mask(path, mapping, s.mask_threshold) for path in item.files[1:]]
    if len({m.shape for m in masks}) > 1:
      raise UserError(f"{item.files[1]}: the masks of one image differ in size.")
    mask = np.maximum.reduce(masks)  # several object masks of one image: their union
    image, mask = folder.fit(image, mask, size, s.resize_mode, item.files[1])
    return image, mask[None], 0

  def read_unlabeled(item):
    image = folder.read_image(item.files[0], s.channels)
    image, mask = folder.fit(image, np.zeros(image.shape[:2], np.uint8), size, s.resize_mode, "")
    return image, mask[None], 0

  splits = {}
  for split, base in _split_dirs(root).items():
    pairs, problems = _matched(base, tuple(s.mask_suffixes))
    if problems:
      raise UserError(problems[0] + ".")
    splits[split] = [folder.Item(f"{split}_{k}", (v[0], *v[1]), read) for k, v in pairs.items()]
  unlabeled = _unlabeled(root).items()
  splits[UNLABELED] = [folder.Item(f"u_{k}", (p,), read_unlabeled) for k, p in unlabeled]
  if not splits.get("train"):
    raise UserError(f"image_folder: no images/ + masks/ pairs found in {root!r}.")
  first = splits["train"][0]
  shape = first.read(first)[0].shape
  return ImageFolder(
    splits=splits,
    shape=shape,
    annotators=1,
    mask_from="first",
    settings=dataclasses.asdict(s),
    data_dir=data_dir,
  )
