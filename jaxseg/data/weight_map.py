"""The U-Net paper's pixel weight map, computed on the host in the input pipeline.

``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))`` where ``w_c`` balances
the class frequencies of the image (``w_c(x) = N / (C * N_{class(x)})``, so it
averages to 1), and ``d1``, ``d2`` are the distances to the nearest and the
second-nearest object, the objects being the connected components (4-connected) of
the foreground (label > 0). As in the paper's figure, the border term applies to
background pixels: it is large in the thin gaps that separate touching objects.
Distances to an object farther than ``4 sigma`` make the term negligible (< e^-8
* w0) and are not computed, so the cost grows with the objects' area, not with the
number of objects times the image.
"""

import numpy as np
from scipy import ndimage


def weight_map(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
  """float32 weights of the class map ``labels [H, W]``."""
  labels = np.asarray(labels)
  classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
  balance = (labels.size / (len(classes) * counts))[inverse].reshape(labels.shape)
  objects, count = ndimage.label(labels > 0)
  if count < 2:  # fewer than two objects: there is no second-nearest object
    return balance.astype(np.float32)
  reach = int(np.ceil(4 * sigma))
  d1 = np.full(labels.shape, np.inf)
  d2 = np.full(labels.shape, np.inf)
  for k, box in enumerate(ndimage.find_objects(objects), start=1):
    rows = slice(max(box[0].start - reach, 0), box[0].stop + reach)
    cols = slice(max(box[1].start - reach, 0), box[1].stop + reach)
    dist = ndimage.distance_transform_edt(objects[rows, cols] != k)
    near1, near2 = d1[rows, cols], d2[rows, cols]
    d2[rows, cols] = np.minimum(near2, np.maximum(near1, dist))
    d1[rows, cols] = np.minimum(near1, dist)
  border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
  return (balance + np.where(labels == 0, border, 0.0)).astype(np.float32)
