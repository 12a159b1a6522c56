"""Procedural street scenes: the quickstart dataset, built in memory.

Each image is a function of ``(seed, split, index)`` only, drawn with
vectorised NumPy (about 1-2 ms per 128x128 image on one core). A scene has a
horizon; above it sky and a row of buildings (with window grids) and trees;
below it a sidewalk and a road in perspective towards a vanishing point, with
dashed lane markings. Poles (some carrying signs), cars and people stand on the
ground, and their size follows the perspective: the same class appears from a
few pixels near the horizon to a large part of the frame near the bottom.

Classes are learnable from local appearance (distinct colours, shading, noise
and texture) but scale matters: thin poles and lane markings are 1-4 px wide,
people wear shirts in colours shared with car bodies (red, blue) and are told
apart by shape and size, far objects are tiny, and near ones fill the view.
See docs/data.md for the class table and the measured statistics.
"""

from __future__ import annotations

import zlib

import numpy as np

from hmsa_keras.data.labels import IGNORE, DatasetInfo, identity_lut

CLASS_NAMES = (
    "sky",
    "building",
    "vegetation",
    "road",
    "sidewalk",
    "lane_marking",
    "pole",
    "sign",
    "car",
    "person",
)
COLORS = (
    (70, 130, 180),
    (70, 70, 70),
    (107, 142, 35),
    (128, 64, 128),
    (244, 35, 232),
    (255, 255, 255),
    (153, 153, 153),
    (220, 220, 0),
    (0, 0, 142),
    (220, 20, 60),
)
SKY, BUILDING, VEGETATION, ROAD, SIDEWALK, LANE, POLE, SIGN, CAR, PERSON = range(10)

_SPLIT_IDS = {"train": 0, "val": 1, "validation": 1, "test": 2}

# Rendered colours (RGB, 0..255); object colours get per-object jitter.
_CAR_COLORS = np.array(
    [[185, 30, 35], [35, 60, 175], [200, 200, 205], [30, 30, 35], [215, 120, 20]], np.float32
)
_SHIRT_COLORS = np.array(
    [[185, 30, 35], [35, 60, 175], [40, 140, 60], [120, 40, 140], [230, 200, 40]], np.float32
)


def dataset_info(config=None) -> DatasetInfo:
    return DatasetInfo(
        "synthetic",
        len(CLASS_NAMES),
        IGNORE,
        list(CLASS_NAMES),
        list(COLORS),
        identity_lut(len(CLASS_NAMES)),
    )


def split_id(split: str) -> int:
    return _SPLIT_IDS.get(split, zlib.crc32(split.encode()) % 1000 + 3)


def split_size(config, split: str) -> int:
    return int(
        config.synthetic_train_size if split == config.train_split else config.synthetic_val_size
    )


class _Canvas:
    """An image/label pair being painted; all coordinates are clipped."""

    def __init__(self, h, w):
        self.h, self.w = h, w
        self.image = np.zeros((h, w, 3), np.float32)
        self.label = np.zeros((h, w), np.uint8)

    def box(self, y0, y1, x0, x1):
        y0, y1 = max(int(round(y0)), 0), min(int(round(y1)), self.h)
        x0, x1 = max(int(round(x0)), 0), min(int(round(x1)), self.w)
        return (slice(y0, y1), slice(x0, x1)) if y1 > y0 and x1 > x0 else None

    def rect(self, y0, y1, x0, x1, cls, color, min_size=1.0):
        # Keep at least ``min_size`` px so far objects do not vanish.
        if y1 - y0 < min_size:
            yc = (y0 + y1) / 2
            y0, y1 = yc - min_size / 2, yc + min_size / 2
        if x1 - x0 < min_size:
            xc = (x0 + x1) / 2
            x0, x1 = xc - min_size / 2, xc + min_size / 2
        s = self.box(y0, y1, x0, x1)
        if s is not None:
            self.image[s] = color
            if cls is not None:
                self.label[s] = cls
        return s

    def ellipse(self, yc, xc, ry, rx, cls, color):
        ry, rx = max(ry, 0.6), max(rx, 0.6)
        s = self.box(yc - ry, yc + ry + 1, xc - rx, xc + rx + 1)
        if s is None:
            return
        yy = np.arange(s[0].start, s[0].stop, dtype=np.float32)[:, None] + 0.5
        xx = np.arange(s[1].start, s[1].stop, dtype=np.float32)[None, :] + 0.5
        m = ((yy - yc) / ry) ** 2 + ((xx - xc) / rx) ** 2 <= 1.0
        self.image[s][m] = color
        if cls is not None:
            self.label[s][m] = cls


def _smooth_noise(rng, h, w, cell):
    """Blotchy low-frequency noise in [-1, 1] (nearest-upsampled random grid, box-smoothed)."""
    gh, gw = h // cell + 2, w // cell + 2
    grid = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    up = np.repeat(np.repeat(grid, cell, 0), cell, 1)[:h, :w]
    return 0.5 * (up + np.roll(up, cell // 2, axis=(0, 1)))


def generate(seed: int, split: str, index: int, size=(128, 128)):
    """One scene: (RGB uint8 [H, W, 3], labels uint8 [H, W]); a pure function of its args."""
    h, w = int(size[0]), int(size[1])
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, split_id(split), int(index)])
    c = _Canvas(h, w)
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]

    horizon = h * rng.uniform(0.35, 0.55)
    vx = w * rng.uniform(0.3, 0.7)
    road_half_bottom = w * rng.uniform(0.25, 0.55)
    depth = np.clip((yy - horizon) / (h - horizon), 0.0, 1.0)  # 0 at horizon, 1 at the bottom

    # Sky: vertical gradient.
    t = np.clip(yy / max(horizon, 1.0), 0, 1)[..., None]
    top = np.array([70, 130, 215], np.float32) + rng.uniform(-15, 15, 3)
    bottom = np.array([185, 210, 240], np.float32) + rng.uniform(-10, 10, 3)
    c.image[:] = top * (1 - t) + bottom * t
    c.label[:] = SKY

    # Ground: sidewalk everywhere below the horizon, tiled texture.
    g0 = min(int(np.ceil(horizon)), h - 1)
    side = np.array([159, 134, 144], np.float32) + rng.uniform(-15, 15, 3)
    tiles = ((np.floor(xx / 6) + np.floor(yy[g0:] / 4)) % 2) * 12.0
    c.image[g0:] = side + tiles[..., None]
    c.label[g0:] = SIDEWALK

    # Buildings along the horizon, with window grids.
    x = -rng.uniform(0, 0.1) * w
    while x < w:
        bw = w * rng.uniform(0.12, 0.32)
        if rng.uniform() < 0.85:
            top_y = horizon - h * rng.uniform(0.08, 0.45)
            base = np.array(
                [rng.uniform(110, 175), rng.uniform(90, 140), rng.uniform(75, 120)], np.float32
            )
            s = c.rect(top_y, horizon + 1, x, x + bw, BUILDING, base)
            if s is not None:
                py, px = rng.uniform(4, 9), rng.uniform(4, 9)
                by = np.arange(s[0].start, s[0].stop, dtype=np.float32)[:, None]
                bx = np.arange(s[1].start, s[1].stop, dtype=np.float32)[None, :]
                win = (((by - top_y) % py) < py * 0.5) & (((bx - x) % px) < px * 0.55)
                win &= (by > top_y + 2) & (by < horizon - 2)
                c.image[s][win] = np.array([55, 65, 85], np.float32) + rng.uniform(-10, 10, 3)
        x += bw

    # Trees: a textured canopy on a thin trunk.
    for _ in range(rng.integers(0, 4)):
        r = h * rng.uniform(0.05, 0.16)
        tx, base_y = w * rng.uniform(0, 1), horizon + h * rng.uniform(0, 0.04)
        c.rect(
            base_y - 2.2 * r,
            base_y,
            tx - 0.12 * r,
            tx + 0.12 * r,
            VEGETATION,
            np.array([90, 65, 40], np.float32),
        )
        c.ellipse(
            base_y - 2.2 * r,
            tx,
            r,
            r * rng.uniform(0.8, 1.3),
            VEGETATION,
            np.array([55, 120, 45], np.float32) + rng.uniform(-15, 15, 3),
        )

    # Road: trapezoid towards the vanishing point (rows below the horizon only).
    half = road_half_bottom * depth[g0:]
    road = np.abs(xx - vx) <= half
    img_g, lbl_g = c.image[g0:], c.label[g0:]
    img_g[road] = np.array([85, 85, 90], np.float32) + rng.uniform(-12, 12, 3)
    lbl_g[road] = ROAD

    # Lane markings: dashed centre line (and sometimes two more), perspective dashes.
    offsets = [0.0] if rng.uniform() < 0.5 else [-0.5, 0.0, 0.5]
    phase = rng.uniform(0, 1)
    dash = ((1.0 / (depth[g0:] + 0.08)) * 0.9 + phase) % 1.0 < 0.55
    width = np.maximum(0.6, road_half_bottom * 0.035 * depth[g0:])
    lanes = np.zeros_like(road)
    for off in offsets:
        lanes |= np.abs(xx - (vx + off * half)) <= width
    lanes &= road & dash
    img_g[lanes] = np.array([235, 235, 225], np.float32)
    lbl_g[lanes] = LANE

    # Standing objects, painted far to near.
    objects = []
    for _ in range(rng.integers(2, 7)):
        objects.append(("pole", rng.uniform(0.03, 1.0) ** 0.7))
    for _ in range(rng.integers(1, 7)):
        objects.append(("car", rng.uniform(0.02, 1.0)))
    for _ in range(rng.integers(1, 7)):
        objects.append(("person", rng.uniform(0.03, 1.0)))
    objects.sort(key=lambda o: o[1])
    for kind, d in objects:
        yb = horizon + d * (h - horizon) + (0.15 * h * d if kind == "car" else 0.0)
        half_at = road_half_bottom * d
        if kind == "car":
            cw = max(2.0, 0.6 * w * d)
            ch = 0.55 * cw
            xc = vx + rng.uniform(-0.7, 0.7) * half_at
            body = _CAR_COLORS[rng.integers(len(_CAR_COLORS))] + rng.uniform(-15, 15, 3)
            c.rect(yb - ch, yb - 0.55 * ch, xc - 0.32 * cw, xc + 0.32 * cw, CAR, body)
            c.rect(yb - 0.6 * ch, yb - 0.12 * ch, xc - cw / 2, xc + cw / 2, CAR, body)
            if cw > 8:
                c.rect(
                    yb - 0.92 * ch,
                    yb - 0.62 * ch,
                    xc - 0.26 * cw,
                    xc + 0.26 * cw,
                    CAR,
                    np.array([45, 55, 75], np.float32),
                )
                for sx in (-0.3, 0.3):
                    c.rect(
                        yb - 0.25 * ch,
                        yb,
                        xc + sx * cw - 0.1 * cw,
                        xc + sx * cw + 0.1 * cw,
                        CAR,
                        np.array([20, 20, 22], np.float32),
                    )
        else:
            side_sign = -1 if rng.uniform() < 0.5 else 1
            xc = vx + side_sign * (half_at * rng.uniform(1.05, 1.6) + rng.uniform(1, 4))
            if kind == "pole":
                pw = max(1.0, 4.0 * d)
                ph = 1.4 * h * d
                c.rect(
                    yb - ph,
                    yb,
                    xc - pw / 2,
                    xc + pw / 2,
                    POLE,
                    np.array([120, 120, 130], np.float32),
                )
                if rng.uniform() < 0.5:
                    r = max(1.2, 7.0 * d)
                    color = np.array([235, 200, 30], np.float32) + rng.uniform(-15, 15, 3)
                    if rng.uniform() < 0.5:
                        c.ellipse(yb - ph, xc, r, r, SIGN, color)
                    else:
                        c.rect(yb - ph - r, yb - ph + r, xc - r, xc + r, SIGN, color)
            else:  # person
                ph = max(3.0, 0.6 * h * d)
                pw = max(1.0, 0.3 * ph)
                shirt = _SHIRT_COLORS[rng.integers(len(_SHIRT_COLORS))] + rng.uniform(-15, 15, 3)
                c.rect(
                    yb - 0.48 * ph,
                    yb,
                    xc - 0.4 * pw,
                    xc + 0.4 * pw,
                    PERSON,
                    np.array([40, 45, 80], np.float32),
                )
                c.rect(yb - 0.84 * ph, yb - 0.46 * ph, xc - pw / 2, xc + pw / 2, PERSON, shirt)
                c.ellipse(
                    yb - 0.92 * ph,
                    xc,
                    0.09 * ph,
                    0.09 * ph,
                    PERSON,
                    np.array([225, 180, 150], np.float32),
                )

    # Texture, shading and sensor noise.
    img = c.image
    veg = c.label == VEGETATION
    img[veg] *= (1.0 + 0.35 * rng.uniform(-1, 1, (int(veg.sum()), 1))).astype(np.float32)
    img *= (1.0 + 0.12 * _smooth_noise(rng, h, w, max(4, h // 8)))[..., None]
    shade = (
        1.0 + rng.uniform(-0.15, 0.15) * (xx / w - 0.5) + rng.uniform(-0.1, 0.1) * (yy / h - 0.5)
    )
    img *= shade[..., None] * rng.uniform(0.8, 1.15)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(3.0, 9.0))
    return np.clip(img, 0, 255).astype(np.uint8), c.label


def generate_batch(seed, split, indices, size=(128, 128)):
    """Stack of :func:`generate` outputs for ``indices``."""
    out = [generate(seed, split, i, size) for i in indices]
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])
