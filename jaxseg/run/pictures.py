"""Pictures a run leaves in its workdir: validation overlays and learning curves."""

import json
import os

import numpy as np
from PIL import Image


def overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
  """RGB uint8: the gray image with ground truth in green and prediction in red."""
  gray = image[..., :1] if image.shape[-1] in (1, 3) else image[..., None]
  rgb = np.repeat(gray.mean(-1, keepdims=True), 3, axis=-1).astype(np.float32)
  rgb = rgb / max(float(rgb.max()), 1e-6)
  for mask, color in ((truth > 0, (0.0, 1.0, 0.0)), (pred > 0, (1.0, 0.0, 0.0))):
    rgb[mask] = 0.5 * rgb[mask] + 0.5 * np.asarray(color)
  return (rgb * 255).round().astype(np.uint8)


def save_overlays(path: str, images, truths, preds, columns: int = 4) -> None:
  """A grid of overlays (image cropped to the prediction's size if it is larger)."""
  tiles = []
  for image, truth, pred in zip(images, truths, preds, strict=True):
    top = (image.shape[0] - pred.shape[0]) // 2
    left = (image.shape[1] - pred.shape[1]) // 2
    image = image[top : top + pred.shape[0], left : left + pred.shape[1]]
    tiles.append(overlay(image, truth, pred))
  while len(tiles) % columns:
    tiles.append(np.zeros_like(tiles[0]))
  rows = [np.concatenate(tiles[i : i + columns], axis=1) for i in range(0, len(tiles), columns)]
  grid = np.concatenate(rows, axis=0)
  scale = max(1, 1024 // grid.shape[1])
  Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(
    path
  )


def save_samples(path: str, images, raters, samples, shown_samples: int = 4) -> None:
  """One row per example: the image, each rater's mask, then model samples (white on
  black), for multi-rater evaluation."""
  rows = []
  for image, masks, drawn in zip(images, raters, samples, strict=True):
    gray = image[..., 0] if image.ndim == 3 else image
    gray = (255 * gray / max(float(gray.max()), 1e-6)).astype(np.uint8)
    tiles = [gray] + [(m > 0).astype(np.uint8) * 255 for m in [*masks, *drawn[:shown_samples]]]
    rows.append(np.concatenate([np.pad(t, 1, constant_values=128) for t in tiles], axis=1))
  width = max(r.shape[1] for r in rows)
  grid = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]))) for r in rows], axis=0)
  scale = max(1, 1024 // grid.shape[1])
  Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(
    path
  )


def save_learning_curves(metrics_path: str, path: str) -> None:
  """Training loss and validation loss/Dice against the step, from ``metrics.jsonl``."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 (0.3 s import)
  from matplotlib.figure import Figure  # noqa: PLC0415

  rows = [json.loads(line) for line in open(metrics_path)] if os.path.exists(metrics_path) else []
  fig = Figure(figsize=(10, 4))
  FigureCanvasAgg(fig)
  ax_loss, ax_dice = fig.subplots(1, 2)
  for split, style in (("train", "-"), ("validation", "o-")):
    points = [(r["step"], r["loss"]) for r in rows if r["split"] == split and "loss" in r]
    if points:
      ax_loss.plot(*zip(*points, strict=True), style, label=split)
  dice = [(r["step"], r["dice"]) for r in rows if r["split"] == "validation"]
  if dice:
    ax_dice.plot(*zip(*dice, strict=True), "o-", color="tab:green")
  ax_loss.set(xlabel="step", ylabel="loss", title="loss", yscale="log")
  ax_dice.set(xlabel="step", ylabel="Dice", title="validation Dice", ylim=(0, 1))
  ax_loss.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=80)


def save_sweep_curves(path: str, means: dict, keep: list[str], panels: list[str]) -> list[str]:
  """A sweep's mean validation Dice against the step: one panel per combination of
  the ``panels`` axes (a pivoted table's columns), one line per other row label; returns
  the legend's labels (every line once, also one drawn in some panels only).
  ``means``: ``{labels of the axes keep: {step: Dice}}`` (``sweep_tables.curve_means``)."""
  import matplotlib  # noqa: PLC0415
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 (0.3 s import)
  from matplotlib.figure import Figure  # noqa: PLC0415

  at = [keep.index(n) for n in panels]

  def panel(key):
    return " ".join(key[i] for i in at)

  def line(key):
    return " ".join(k for i, k in enumerate(key) if i not in at)

  titles, lines = list(dict.fromkeys(map(panel, means))), list(dict.fromkeys(map(line, means)))
  fig = Figure(figsize=(3.5 * len(titles) + 2.5, 3.5))
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, len(titles), sharey=True, squeeze=False)[0]
  colors = [matplotlib.colormaps["tab20"](i % 20) for i in range(len(lines))]
  for key, curve in means.items():
    if curve:
      ax, color = axes[titles.index(panel(key))], colors[lines.index(line(key))]
      ax.plot(list(curve), list(curve.values()), "o-", ms=3, color=color, label=line(key))
  for ax, title in zip(axes, titles, strict=True):
    ax.set(xlabel="step (round)", title=title or "validation Dice", ylim=(0, 1))
  axes[0].set_ylabel("validation Dice")
  handles = {}  # every line once, also those drawn in some panels only
  for ax in axes:
    for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
      handles.setdefault(label, handle)
  labels = [name for name in lines if name in handles]
  axes[-1].legend(
    [handles[n] for n in labels], labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1)
  )
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  return labels


def save_grid(path: str, rows) -> None:
  """Rows of tiles in [0, 1] (``[H, W]`` or ``[H, W, C]``, gray or RGB) as one PNG."""

  def rgb(tile):
    tile = np.asarray(tile, np.float32)
    tile = tile[..., None] if tile.ndim == 2 else tile
    tile = np.repeat(tile, 3, -1) if tile.shape[-1] == 1 else tile[..., :3]
    return np.pad((np.clip(tile, 0, 1) * 255).round().astype(np.uint8), ((1, 1), (1, 1), (0, 0)))

  grid = np.concatenate([np.concatenate([rgb(t) for t in row], axis=1) for row in rows], axis=0)
  scale = max(1, 1024 // grid.shape[1])
  Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(
    path
  )
