"""What real micrographs hold besides particles in ice: a carbon film, ice contaminants, particle aggregates, and
the smoothed, 8-bit "denoised" export some pipelines pick on.

Strengths are stated in units of the micrograph's white-noise s.d. (the functions return images in those units;
:mod:`cryopipe.simulate.micrographs` multiplies by it). Shapes are (H, W) = (rows, columns); positions (x, y) px.
Each function draws from the generator it is given: the simulator passes each feature a generator of its own, so
switching a feature on leaves every other random draw as it was.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.special import erf, erfc

CARBON_OFFSET = 0.5  # the carbon is darker than the ice by this many noise s.d. (the mean step at its edge)
CARBON_TEXTURE = 0.25  # s.d. of the carbon's own low-frequency texture, noise s.d.
CARBON_TEXTURE_A = 40.0  # correlation length of that texture: s.d. of the Gaussian smoothing white noise, Angstrom
CARBON_EDGE_A = 5.0  # width (Gaussian s.d.) of the step at the edge, Angstrom
CARBON_EDGE_RADIUS = (1.5, 4.0)  # the edge is an arc of a hole of this radius, in micrograph sizes (max(H, W))

CONTAMINANT_DIAMETER = (1.5, 4.0)  # in particle diameters
CONTAMINANT_DARK = (2.0, 4.0)  # depth of a dark one (crystalline ice, ethane), noise s.d.
CONTAMINANT_BRIGHT = (0.5, 1.5)  # height of a bright one, noise s.d.
CONTAMINANT_BRIGHT_FRACTION = 0.25
CONTAMINANT_EDGE = 0.08  # soft edge: Gaussian s.d. of the rim as a fraction of the blob's radius
CONTAMINANT_ROUGHNESS = 0.15  # largest amplitude of the outline's harmonics 2..4, fraction of the radius
CONTAMINANT_FOOTPRINT = 0.1  # the blob's excluded region: where its profile exceeds this fraction of its depth

AGGREGATE_SIZE = (5, 12)  # particles per aggregate (inclusive)
AGGREGATE_SPACING = (0.3, 0.5)  # a member's distance to an earlier member, particle diameters

DENOISE_SIGMA_A = 5.0  # the denoised export's Gaussian low-pass: s.d. in Angstrom
DENOISE_CLIP_PERCENT = 0.1  # the 8-bit levels span the image's [0.1, 99.9] percentiles; beyond is clipped


def carbon_film(rng: np.random.Generator, shape: tuple[int, int], fraction: float,
                angpix: float) -> tuple[np.ndarray, np.ndarray]:
    """A carbon film covering ``fraction`` of the micrograph beyond a slightly curved edge.

    The edge is an arc of a circular hole (radius 1.5-4 micrograph sizes, random direction) placed so that the
    fraction of pixels beyond it is ``fraction``. Returns (film, mask): film (H, W) float64 in noise s.d., a soft
    step of depth -CARBON_OFFSET (Gaussian edge of CARBON_EDGE_A) plus, on the carbon, a texture of s.d.
    CARBON_TEXTURE correlated over CARBON_TEXTURE_A; mask (H, W) bool, the pixels beyond the edge.
    """
    h, w = shape
    theta = rng.uniform(0.0, 2.0 * np.pi)
    normal = np.array([np.cos(theta), np.sin(theta)])
    radius = rng.uniform(*CARBON_EDGE_RADIUS) * max(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    middle = np.array([0.5 * (w - 1), 0.5 * (h - 1)])

    def beyond(s: float, step: int) -> np.ndarray:
        """Signed distance (px) beyond the edge whose point nearest the middle is middle + s * normal."""
        cx, cy = middle + (s - radius) * normal
        return np.hypot(xx[::step, ::step] - cx, yy[::step, ::step] - cy) - radius

    lo, hi = -float(np.hypot(h, w)), float(np.hypot(h, w))  # the covered fraction falls as s grows
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if (beyond(mid, 4) > 0).mean() > fraction else (lo, mid)
    distance = beyond(0.5 * (lo + hi), 1)
    step = 0.5 * (1.0 + erf(distance / (np.sqrt(2.0) * CARBON_EDGE_A / angpix)))
    texture = gaussian_filter(rng.standard_normal(shape), CARBON_TEXTURE_A / angpix)
    texture /= texture.std()
    return step * (CARBON_TEXTURE * texture - CARBON_OFFSET), distance > 0


def contaminants(rng: np.random.Generator, shape: tuple[int, int], count: int,
                 diameter_px: float) -> tuple[np.ndarray, np.ndarray]:
    """``count`` ice contaminants: irregular round blobs 1.5-4 particle diameters across with soft edges.

    Three in four are dark (depth 2-4 noise s.d.), the rest bright (0.5-1.5); centres uniform over the micrograph.
    Returns (image, mask): image (H, W) float64 in noise s.d.; mask (H, W) bool, where a blob's profile exceeds
    CONTAMINANT_FOOTPRINT of its depth.
    """
    h, w = shape
    image, mask = np.zeros(shape), np.zeros(shape, bool)
    for _ in range(count):
        radius = 0.5 * diameter_px * rng.uniform(*CONTAMINANT_DIAMETER)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        harmonics = rng.uniform(0.0, CONTAMINANT_ROUGHNESS, size=3)
        phases = rng.uniform(0.0, 2.0 * np.pi, size=3)
        bright = rng.random() < CONTAMINANT_BRIGHT_FRACTION
        amplitude = rng.uniform(*CONTAMINANT_BRIGHT) if bright else -rng.uniform(*CONTAMINANT_DARK)
        edge = CONTAMINANT_EDGE * radius
        reach = int(np.ceil(radius * (1.0 + harmonics.sum()) + 4.0 * edge))
        y0, y1 = max(0, int(cy) - reach), min(h, int(cy) + reach + 1)
        x0, x1 = max(0, int(cx) - reach), min(w, int(cx) + reach + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        phi = np.arctan2(yy - cy, xx - cx)
        outline = radius * (1.0 + sum(a * np.cos(k * phi + ph) for k, a, ph in zip((2, 3, 4), harmonics, phases,
                                                                                   strict=True)))
        profile = 0.5 * erfc((np.hypot(xx - cx, yy - cy) - outline) / (np.sqrt(2.0) * edge))
        image[y0:y1, x0:x1] += amplitude * profile
        mask[y0:y1, x0:x1] |= profile > CONTAMINANT_FOOTPRINT
    return image, mask


def aggregate_centres(rng: np.random.Generator, shape: tuple[int, int], count: int, diameter_px: float,
                      margin: int) -> np.ndarray:
    """Centres (n, 2) = (x, y) px of ``count`` aggregates of 5-12 overlapping particles each, all aggregates' rows.

    An aggregate starts at a uniform position; each further member lies 0.3-0.5 diameters from a randomly chosen
    earlier one, so the particles overlap. Every centre is kept ``margin`` px from the edges (clipped).
    """
    h, w = shape
    high = np.array([w - 1 - margin, h - 1 - margin], dtype=np.float64)
    clumps = []
    for _ in range(count):
        k = int(rng.integers(AGGREGATE_SIZE[0], AGGREGATE_SIZE[1] + 1))
        members = [rng.uniform(margin, high)]
        for _ in range(k - 1):
            parent = members[int(rng.integers(len(members)))]
            angle = rng.uniform(0.0, 2.0 * np.pi)
            step = diameter_px * rng.uniform(*AGGREGATE_SPACING)
            members.append(np.clip(parent + step * np.array([np.cos(angle), np.sin(angle)]), margin, high))
        clumps.append(np.array(members))
    return np.vstack(clumps) if clumps else np.zeros((0, 2))


def denoised_export(image: np.ndarray, angpix: float) -> tuple[np.ndarray, float, float]:
    """The micrograph as a denoiser exports it: smoothed, then quantised to 256 levels.

    The (H, W) image is low-passed by a Gaussian of DENOISE_SIGMA_A, clipped to its [0.1, 99.9] percentiles
    (low, high) and mapped linearly onto the integers 0..255 (low -> 0, high -> 255; dark stays dark). Returns
    (levels, low, high): levels (H, W) float32 holding those integers. They are kept as float32 rather than written
    as an 8-bit MRC mode because :func:`cryopipe.io.mrc.write_mrc` writes float32 only and its reader knows MRC
    mode 0 as signed int8; every value is still one of the 256 levels.
    """
    smooth = gaussian_filter(np.asarray(image, dtype=np.float64), DENOISE_SIGMA_A / angpix)
    low, high = (float(v) for v in np.percentile(smooth, [DENOISE_CLIP_PERCENT, 100.0 - DENOISE_CLIP_PERCENT]))
    scale = 255.0 / (high - low) if high > low else 0.0
    levels = np.round((np.clip(smooth, low, high) - low) * scale)
    return levels.astype(np.float32), low, high
