"""Procedural images from latents: a textured background and ``count`` coloured shapes that carry
the concept's 4x4 glyph, optionally a caption printed on a white band.

Vectorised over images: every random choice is a hash of (layout, slot), so an image depends only
on its own latents, never on the batch it is rendered in.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# object centres (fractions of the side) and radius per count
_LAYOUTS = {
    1: ([(0.5, 0.5)], 0.30),
    2: ([(0.28, 0.5), (0.72, 0.5)], 0.19),
    3: ([(0.27, 0.3), (0.73, 0.3), (0.5, 0.72)], 0.17),
    4: ([(0.28, 0.28), (0.72, 0.28), (0.28, 0.72), (0.72, 0.72)], 0.16),
    5: ([(0.24, 0.24), (0.76, 0.24), (0.24, 0.76), (0.76, 0.76), (0.5, 0.5)], 0.13),
}
_CHUNK = 1024


def _hash_uniform(layout: np.ndarray, slot: int) -> np.ndarray:
    """Uniform [0, 1) float32 from (layout, slot) via splitmix64."""
    x = layout.astype(np.uint64) * np.uint64(0x100) + np.uint64(slot)
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return ((x >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)).astype(np.float32)


def _pattern(tex: int, lay: np.ndarray, size: int) -> np.ndarray:
    """(k, size, size) float32 in [0, 1]: mix weight of the dark background colour for one texture."""
    k = len(lay)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    # periods of 10-15 px at 64 px: finer patterns alias away in the stored (resized, JPEG) images
    # and in a CNN's downsampling stem, and a texture no model can see is no test of the data
    period = (0.16 + 0.08 * _hash_uniform(lay, 4))[:, None, None]
    phase = _hash_uniform(lay, 5)[:, None, None]
    flip = (_hash_uniform(lay, 6) < 0.5)[:, None, None]
    a = np.where(flip, xx[None], yy[None])
    b = np.where(flip, yy[None], xx[None])
    # 0 plain, 1 striped, 2 dotted, 3 checkered, 4 gradient, 5 noisy, 6 grid, 7 wavy
    if tex == 0:
        return np.zeros((k, size, size), dtype=np.float32)
    if tex == 1:
        return np.floor((a + b) / period + phase) % 2
    if tex in (2, 6):
        du, dv = (a / period + phase) % 1 - 0.5, (b / period + phase) % 1 - 0.5
        if tex == 2:
            return (du * du + dv * dv < 0.06).astype(np.float32)
        return ((du * du > 0.16) | (dv * dv > 0.16)).astype(np.float32)
    if tex == 3:
        return (np.floor(a / (1.6 * period)) + np.floor(b / (1.6 * period))) % 2
    if tex == 4:
        return np.ascontiguousarray(a)
    if tex == 5:  # random cells of about 3 px (per-pixel noise averages out when resized)
        cells = max(1, size // 21)
        cy, cx = np.mgrid[0:size, 0:size] // cells
        cell = (cy * size + cx).astype(np.uint64).reshape(-1)
        pix = cell[None] + lay.astype(np.uint64)[:, None] * np.uint64(size * size)
        return _hash_uniform(pix.reshape(-1), 7).reshape(k, size, size)
    return (np.sin((a + 0.08 * np.sin(b * 25 + phase * 6)) / period * np.pi) > 0).astype(np.float32)


def _background(lat: np.ndarray, size: int) -> np.ndarray:
    """(n, size, size, 3) float32 textured backgrounds: a light colour and a darker one, mixed by pattern."""
    n = len(lat)
    lay = lat["layout"]
    base = (150 + 90 * np.stack([_hash_uniform(lay, i) for i in range(3)], axis=1)).astype(
        np.float32
    )
    dark = base * (0.55 + 0.15 * _hash_uniform(lay, 3))[:, None]
    p = np.empty((n, size, size), dtype=np.float32)
    tex = lat["texture"]
    for t in np.unique(tex):
        rows = np.flatnonzero(tex == t)
        p[rows] = _pattern(int(t), lay[rows], size)
    p = p[..., None]
    return base[:, None, None, :] + (dark - base)[:, None, None, :] * p


def _shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of one shape on local coordinates (unit radius)."""
    au, av = np.abs(u), np.abs(v)
    if shape == 0:
        return u * u + v * v <= 1.0
    if shape == 1:
        return np.maximum(au, av) <= 0.82
    if shape == 2:
        return (v <= 0.7) & (v >= -0.95) & (au <= (v + 0.95) * 0.62)
    if shape == 3:  # five-pointed star, a point on top
        t = ((np.arctan2(v, u) + np.pi / 2) * (5 / (2 * np.pi))) % 1
        return np.sqrt(u * u + v * v) <= 0.42 + 0.6 * np.abs(2 * t - 1)
    if shape == 4:
        return au + av <= 1.0
    if shape == 5:
        return (av <= 0.87) & (au * 0.87 + av * 0.5 <= 0.87)
    if shape == 6:
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.3)
    return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))


def render(world, lat: np.ndarray, size: int = 64, texts=None) -> np.ndarray:
    """uint8 (n, size, size, 3) images for structured latents ``lat`` (see World.render)."""
    n = len(lat)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for a in range(0, n, _CHUNK):
        out[a : a + _CHUNK] = _render_chunk(world, lat[a : a + _CHUNK], size)
    if texts is not None:
        _draw_texts(out, texts)
    return out


def _render_chunk(world, lat: np.ndarray, size: int) -> np.ndarray:
    img = _background(lat, size)
    n = len(lat)
    pix = img.reshape(n * size * size, 3)
    lay = lat["layout"]
    count = lat["count"].astype(np.int64)
    colour = world.colour_rgb[lat["colour"].astype(np.int64)]
    glyph = world.glyphs[lat["concept"].astype(np.int64)]  # (n, 16)
    for c, (centres, rad) in _LAYOUTS.items():
        rows = np.flatnonzero(count == c)
        if rows.size == 0:
            continue
        patch = int(np.ceil(2 * rad * 1.1 * size)) + 2
        patch = min(patch, size)
        ar = np.arange(patch, dtype=np.float32)
        for j, (cx0, cy0) in enumerate(centres):
            lj = lay[rows]
            r = rad * size * (0.9 + 0.2 * _hash_uniform(lj, 10 + 3 * j))
            cx = cx0 * size + (_hash_uniform(lj, 11 + 3 * j) - 0.5) * 0.08 * size
            cy = cy0 * size + (_hash_uniform(lj, 12 + 3 * j) - 0.5) * 0.08 * size
            x0 = np.clip(np.floor(cx - patch / 2), 0, size - patch).astype(np.int64)
            y0 = np.clip(np.floor(cy - patch / 2), 0, size - patch).astype(np.int64)
            px = (x0[:, None] + ar[None] + 0.5 - cx[:, None]) / r[:, None]  # (k, patch)
            py = (y0[:, None] + ar[None] + 0.5 - cy[:, None]) / r[:, None]
            u = np.broadcast_to(px[:, None, :], (len(rows), patch, patch))
            v = np.broadcast_to(py[:, :, None], (len(rows), patch, patch))
            mask = np.empty(u.shape, dtype=bool)
            shp = lat["shape"][rows]
            for sh in np.unique(shp):
                sel = np.flatnonzero(shp == sh)
                mask[sel] = _shape_mask(int(sh), u[sel], v[sel])
            gx = np.clip(np.floor((u + 1) * 2), 0, 3).astype(np.int64)
            gy = np.clip(np.floor((v + 1) * 2), 0, 3).astype(np.int64)
            bit = np.take_along_axis(
                glyph[rows], (gy * 4 + gx).reshape(len(rows), -1), axis=1
            ).reshape(mask.shape)
            shade = np.where(bit, np.float32(1.0), np.float32(0.55))
            ys = y0[:, None] + np.arange(patch)[None]
            xs = x0[:, None] + np.arange(patch)[None]
            flat = (rows[:, None, None] * size + ys[:, :, None]) * size + xs[:, None, :]
            hit = np.flatnonzero(mask)
            k_of = hit // (patch * patch)
            pix[flat.reshape(-1)[hit]] = colour[rows][k_of] * shade.reshape(-1)[hit][:, None]
    if getattr(world, "badges", None) is not None:  # two-colour concept badge, top-left, over the objects
        from clipsift.synth.world import BADGE_RGB

        side = max(4, int(round(0.16 * size)))
        pair = world.badges[lat["concept"].astype(np.int64)]
        img[:, 1 : 1 + side, 1 : 1 + side] = BADGE_RGB[pair[:, 0]][:, None, None, :]
        img[:, 1 : 1 + side, 1 + side : 1 + 2 * side] = BADGE_RGB[pair[:, 1]][:, None, None, :]
    near = np.flatnonzero(lat["variant"])  # near-duplicate copies: slightly brighter, flatter
    if near.size:
        v = lat["variant"][near].astype(np.float32)[:, None, None, None]
        img[near] = img[near] * (1 - 0.03 * v) + 5 * v
    np.rint(img, out=img)
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)


def _draw_texts(out: np.ndarray, texts) -> None:
    """Print each non-empty text on a white band at the bottom (PIL, only for the flagged images)."""
    size = out.shape[1]
    font = ImageFont.load_default(size=max(6, size // 7))
    band = max(8, int(size * 0.3))
    for i, t in enumerate(texts):
        if not t:
            continue
        im = Image.fromarray(out[i])
        draw = ImageDraw.Draw(im)
        draw.rectangle([0, size - band, size, size], fill=(255, 255, 255))
        words = str(t).split()
        half = max(1, (len(words) + 1) // 2)
        lines = [" ".join(words[:half]), " ".join(words[half:])]
        step = band // 2
        for k, line in enumerate(lines):
            draw.text((1, size - band + k * step), line, fill=(0, 0, 0), font=font)
        out[i] = np.asarray(im)
