"""Procedural ultrasound-like images with a small nerve, as pure JAX functions.

The picture imitates the SCAUnet problem (median nerve at the wrist/forearm, SPEC §2):
tissue layers under multiplicative speckle with depth attenuation; the nerve as an
ellipse with a bright epineurium and dark honeycomb fascicles covering 1–3% of the
image; landmarks next to it (an anechoic artery with a bright wall, a bright bone
surface with an acoustic shadow beneath) and distractors (fibrillar tendons and dark
veins of similar size). Per-site domain shift changes gain, contrast and speckle.
Several annotators' masks are drawn by jittering the nerve boundary.

Everything is a pure function of a PRNG key, jit-compiled and vmapped over images.
"""

import functools
import math

import jax
import jax.numpy as jnp

MAX_DISTRACTORS = 8


def _uniform(key, lo, hi, shape=()):
  return jax.random.uniform(key, shape, minval=lo, maxval=hi)


def _rotate(y, x, cy, cx, theta):
  """Coordinates of (y, x) in a frame centred at (cy, cx) and rotated by theta."""
  dy, dx = y - cy, x - cx
  c, s = jnp.cos(theta), jnp.sin(theta)
  return c * dy - s * dx, s * dy + c * dx


def _ellipse_radius(y, x, cy, cx, a, b, theta):
  """Normalised elliptic radius: < 1 inside the ellipse (semi-axes a along x, b along y)."""
  v, u = _rotate(y, x, cy, cx, theta)
  return jnp.sqrt((u / a) ** 2 + (v / b) ** 2)


def _hash01(i, j, salt):
  """Deterministic pseudo-random value in [0, 1) per lattice cell (shader-style hash)."""
  return jnp.mod(jnp.sin(i * 12.9898 + j * 78.233 + salt * 37.719) * 43758.5453, 1.0)


def _honeycomb(y, x, spacing, radius_frac, salt):
  """1 inside round fascicles on a jittered hexagonal lattice, 0 between them."""
  best = jnp.full(y.shape, jnp.inf)
  row = spacing * math.sqrt(3.0)
  for off_y, off_x in ((0.0, 0.0), (0.5, 0.5)):  # a hex lattice = two rectangular ones
    j = jnp.round(y / row - off_y)
    i = jnp.round(x / spacing - off_x)
    dy = y - (j + off_y) * row
    dx = x - (i + off_x) * spacing
    r = spacing * radius_frac * (0.7 + 0.6 * _hash01(i + off_x, j + off_y, salt))
    best = jnp.minimum(best, jnp.sqrt(dy**2 + dx**2) / r)
  return jax.nn.sigmoid((1.0 - best) * 6.0)


def _blur(img, sigma):
  """Gaussian blur with a 7x7 kernel (sigma in pixels)."""
  t = jnp.arange(-3, 4, dtype=jnp.float32)
  g = jnp.exp(-(t**2) / (2 * sigma**2))
  g = g / g.sum()
  img = jnp.pad(img, 3, mode="reflect")
  img = jax.scipy.signal.convolve2d(img, g[None, :], mode="same")
  return jax.scipy.signal.convolve2d(img, g[:, None], mode="same")[3:-3, 3:-3]


def site_params(key, num_sites):
  """Per-site acquisition settings ``[num_sites, 3]``: gain, gamma, speckle scale.

  Site 0 is the neutral reference; other sites are shifted by draws from ``key``.
  """
  gain = _uniform(jax.random.fold_in(key, 0), 0.7, 1.3, (num_sites,))
  gamma = jnp.exp(_uniform(jax.random.fold_in(key, 1), -0.35, 0.35, (num_sites,)))
  speckle = _uniform(jax.random.fold_in(key, 2), 0.7, 1.4, (num_sites,))
  params = jnp.stack([gain, gamma, speckle], axis=-1)
  return params.at[0].set(jnp.array([1.0, 1.0, 1.0]))


@functools.partial(jax.jit, static_argnames=("size", "num_annotators"))
@functools.partial(jax.vmap, in_axes=(0, 0, None, None, None, None))
def render(key, site, size, difficulty, num_annotators, annotator_jitter):
  """Renders one image (vmapped over ``key`` and ``site``).

  Args:
    key: PRNG key of the image.
    site: ``[3]`` site settings from :func:`site_params`.
    size: image side length in pixels.
    difficulty: 0 (easy) .. 1 (hard): speckle, distractor count, nerve contrast.
    num_annotators: number of jittered annotator masks to draw.
    annotator_jitter: relative std of the annotators' boundary jitter.

  Returns:
    ``(image [size, size] float32 in [0, 1], mask [size, size] bool,
    annotators [num_annotators, size, size] bool)``.
  """
  keys = iter(jax.random.split(key, 40))
  s = float(size)
  y, x = jnp.meshgrid(
    jnp.arange(size, dtype=jnp.float32) + 0.5,
    jnp.arange(size, dtype=jnp.float32) + 0.5,
    indexing="ij",
  )

  # Tissue layers: wavy horizontal boundaries, random echogenicity per layer.
  img = jnp.full((size, size), 0.35)
  for k in range(4):
    depth = s * (0.08 + 0.22 * k) + _uniform(next(keys), -0.05, 0.05) * s
    wave = (
      _uniform(next(keys), 0.0, 0.04)
      * s
      * jnp.sin(
        2 * jnp.pi * x / (s * _uniform(next(keys), 0.6, 1.5)) + _uniform(next(keys), 0, 6.3)
      )
    )
    level = _uniform(next(keys), 0.2, 0.55)
    img = jnp.where(y > depth + wave, level, img)
  img = jnp.where(y < s * 0.03, 0.85, img)  # skin / transducer interface

  # Nerve geometry: area 1–3% of the image, aspect 0.5–0.9, slight tilt.
  area = _uniform(next(keys), 0.01, 0.03) * s * s
  aspect = _uniform(next(keys), 0.5, 0.9)
  a = jnp.sqrt(area / (jnp.pi * aspect))
  b = a * aspect
  theta = _uniform(next(keys), -0.5, 0.5)
  cy = _uniform(next(keys), 0.3, 0.6) * s
  cx = _uniform(next(keys), 0.25, 0.75) * s

  # Bone deeper than the nerve: bright surface, acoustic shadow beneath it.
  bone_y = cy + b + _uniform(next(keys), 0.15, 0.3) * s
  bone_cx = cx + _uniform(next(keys), -0.25, 0.25) * s
  bone_w = _uniform(next(keys), 0.2, 0.4) * s
  bone_surface = bone_y + 0.08 * s * ((x - bone_cx) / bone_w) ** 2
  in_span = jnp.abs(x - bone_cx) < bone_w
  img = jnp.where(in_span & (y > bone_surface), img * 0.15, img)
  img = jnp.where(in_span & (jnp.abs(y - bone_surface) < 0.015 * s + 0.6), 0.95, img)

  # Distractors: tendons (bright, fibrillar) and veins (dark), away from the nerve.
  count = jnp.round(2 + difficulty * (MAX_DISTRACTORS - 2))
  for k in range(MAX_DISTRACTORS):
    dist = a * _uniform(jax.random.fold_in(key, 100 + k), 1.8, 4.0)
    ang = _uniform(jax.random.fold_in(key, 200 + k), 0.0, 2 * jnp.pi)
    dy_, dx_ = dist * jnp.sin(ang), dist * jnp.cos(ang)
    da = a * _uniform(jax.random.fold_in(key, 300 + k), 0.6, 1.2)
    db = da * _uniform(jax.random.fold_in(key, 400 + k), 0.4, 0.9)
    dth = _uniform(jax.random.fold_in(key, 500 + k), -0.6, 0.6)
    r = _ellipse_radius(y, x, cy + dy_, cx + dx_, da, db, dth)
    v, _ = _rotate(y, x, cy + dy_, cx + dx_, dth)
    tendon = 0.6 + 0.25 * jnp.cos(2 * jnp.pi * v / jnp.maximum(0.25 * db, 1.0))
    is_tendon = k % 2 == 0
    value = jnp.where(r > 0.85, 0.8, tendon) if is_tendon else 0.08
    img = jnp.where((r < 1.0) & (k < count), value, img)

  # Artery next to the nerve: anechoic lumen with a bright wall.
  art_ang = _uniform(next(keys), 0.0, 2 * jnp.pi)
  art_r = a * _uniform(next(keys), 0.45, 0.7)
  art_d = a + art_r + _uniform(next(keys), 0.1, 0.5) * a
  ar = jnp.sqrt((y - cy - art_d * jnp.sin(art_ang)) ** 2 + (x - cx - art_d * jnp.cos(art_ang)) ** 2)
  img = jnp.where(ar < art_r * 1.2, 0.8, img)
  img = jnp.where(ar < art_r, 0.04, img)

  # The nerve: bright epineurium rim, hyperechoic matrix, dark honeycomb fascicles.
  contrast = 1.0 - 0.5 * difficulty
  nr = _ellipse_radius(y, x, cy, cx, a, b, theta)
  v, u = _rotate(y, x, cy, cx, theta)
  fascicles = _honeycomb(
    v, u, spacing=jnp.maximum(a / 2.4, 2.0), radius_frac=0.36, salt=_uniform(next(keys), 0.0, 100.0)
  )
  matrix = 0.6 - contrast * 0.42 * fascicles
  nerve = jnp.where(nr > 0.82, 0.6 + 0.3 * contrast, matrix)
  mask = nr < 1.0
  img = jnp.where(mask, nerve, img)

  # Imaging: depth attenuation, speckle, point-spread blur, noise, site shift.
  gain, gamma, speckle_scale = site[0], site[1], site[2]
  img = img * jnp.exp(-_uniform(next(keys), 0.3, 0.9) * y / s)
  field = jax.random.normal(next(keys), (2, size, size))
  speckle = jnp.sqrt(_blur(field[0], 0.7) ** 2 + _blur(field[1], 0.7) ** 2)
  speckle = speckle / jnp.mean(speckle)
  strength = jnp.clip((0.35 + 0.4 * difficulty) * speckle_scale, 0.0, 0.95)
  img = img * (1.0 - strength + strength * speckle)
  img = _blur(img, 0.6) + 0.03 * jax.random.normal(next(keys), (size, size))
  img = jnp.clip(img * gain, 0.0, 1.0) ** gamma

  # Annotators: low-frequency radial jitter of the boundary, small shift and scale.
  phi = jnp.arctan2(v / b, u / a)
  annotators = []
  for k in range(num_annotators):
    ak = jax.random.split(jax.random.fold_in(key, 1000 + k), 3)
    harmonics = annotator_jitter * jax.random.normal(ak[0], (4,))
    phases = _uniform(ak[1], 0.0, 2 * jnp.pi, (4,))
    shift = annotator_jitter * jax.random.normal(ak[2], (3,))
    radial = (
      1.0 + shift[0] + sum(harmonics[i] * jnp.cos((i + 2) * phi + phases[i]) for i in range(4))
    )
    rk = _ellipse_radius(y, x, cy + shift[1] * b, cx + shift[2] * a, a, b, theta)
    annotators.append(rk < radial)
  annotators = jnp.stack(annotators) if annotators else jnp.zeros((0, size, size), bool)
  return img.astype(jnp.float32), mask, annotators
