"""One batch of crawl samples: latents plus every planted phenomenon, drawn vectorised from one rng.

A row's outputs (caption, embeddings, pixels) are pure functions of its content record and noise,
so duplicate groups are made by copying records, and shards can be generated in any order.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from clipsift.synth import text
from clipsift.synth.world import LATENT_DTYPE, World, _unit

CAPTION_FIELDS = ("concept", "shape", "colour", "texture", "count")

CONTENT_DTYPE = np.dtype(
    LATENT_DTYPE.descr
    + [
        ("kind", "u1"),
        ("lang", "u1"),
        ("template", "u1"),
        ("generic_num", "<i8"),
        ("mismatched", "?"),
        ("cap_concept", "<i4"),
        ("cap_shape", "u1"),
        ("cap_colour", "u1"),
        ("cap_texture", "u1"),
        ("cap_count", "u1"),
        ("quality", "<f4"),
        ("rendered_text", "?"),
        ("width", "<i8"),
        ("height", "<i8"),
        ("small", "?"),
        ("extreme", "?"),
        ("n_faces", "u1"),
        ("faces", "<f8", (3, 4)),
        ("sha", "u1", (32,)),
    ]
)


def draw_content(world: World, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` content records with phenomena at the world's rates (fixed draw order ⇒ reproducible)."""
    r = world.rates
    c = np.zeros(n, dtype=CONTENT_DTYPE)
    lat = world.sample_latents(n, rng)
    for f in LATENT_DTYPE.names:
        c[f] = lat[f]
    # caption kind and language
    u = rng.random(n)
    kind = np.where(
        u < r["generic_caption"],
        text.KIND_GENERIC,
        np.where(u < r["generic_caption"] + r["short_caption"], text.KIND_SHORT, text.KIND_NORMAL),
    )
    lang_p = np.cumsum([r["lang_de"], r["lang_fr"], r["lang_es"]])
    lang = 1 + np.searchsorted(lang_p, rng.random(n), side="right")
    lang = np.where((lang > 3) | (kind != text.KIND_NORMAL), 0, lang)
    c["kind"] = kind
    c["lang"] = lang
    c["template"] = rng.integers(0, 1 << 16, n) % world._n_templates[kind, lang]
    c["generic_num"] = rng.integers(0, 10000, n)
    # mismatched captions describe a fresh sample of another concept
    mis = (kind != text.KIND_GENERIC) & (rng.random(n) < r["mismatched"])
    other = world.sample_latents(n, rng)
    same = other["concept"] == lat["concept"]
    other["concept"] = np.where(same, (other["concept"] + 1) % world.n_concepts, other["concept"])
    c["mismatched"] = mis
    for f in CAPTION_FIELDS:
        c["cap_" + f] = np.where(mis, other[f], lat[f])
    c["quality"] = 0.35 + 0.65 * rng.beta(4.0, 1.5, n)
    c["rendered_text"] = rng.random(n) < r["rendered_text"]
    # original image size
    small = rng.random(n) < r["small_image"]
    extreme = rng.random(n) < r["extreme_aspect"]
    short_side = np.where(
        small,
        np.exp(rng.uniform(np.log(24), np.log(199.99), n)),
        200 + np.exp(rng.normal(np.log(350), 0.6, n)),
    )
    short_side = np.floor(np.clip(short_side, 16, 4000))
    aspect = np.where(
        extreme,
        np.exp(rng.uniform(np.log(3.05), np.log(8.0), n)),
        np.minimum(1.0 + np.abs(rng.normal(0, 0.45, n)), 2.8),
    )
    long_side = np.maximum(np.floor(short_side * aspect), short_side)
    landscape = rng.random(n) < 0.62
    c["width"] = np.where(landscape, long_side, short_side).astype(np.int64)
    c["height"] = np.where(landscape, short_side, long_side).astype(np.int64)
    c["small"] = small
    c["extreme"] = extreme
    # faces: 1-3 boxes, relative coordinates
    has_face = rng.random(n) < r["faces"]
    c["n_faces"] = np.where(has_face, rng.integers(1, 4, n), 0)
    side = rng.uniform(0.06, 0.25, (n, 3))
    x0 = rng.uniform(0, 1, (n, 3)) * (1 - side)
    y0 = rng.uniform(0, 1, (n, 3)) * (1 - side)
    c["faces"] = np.stack([x0, y0, x0 + side, y0 + side], axis=2)
    c["sha"] = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    return c


def latents_of(content: np.ndarray) -> np.ndarray:
    out = np.zeros(len(content), dtype=LATENT_DTYPE)
    for f in LATENT_DTYPE.names:
        out[f] = content[f]
    return out


def caption_latents(content: np.ndarray) -> np.ndarray:
    out = np.zeros(len(content), dtype=LATENT_DTYPE)
    for f in CAPTION_FIELDS:
        out[f] = content["cap_" + f]
    return out


def captions(world: World, content: np.ndarray) -> pa.Array:
    """Caption strings (pyarrow) of content records."""
    phrase = content["template"].astype(np.int64)
    return world._fill(
        content["kind"].astype(np.int64),
        content["lang"].astype(np.int64),
        phrase,
        caption_latents(content),
        content["generic_num"],
    )


def embeddings(world: World, content: np.ndarray, noise: dict) -> dict:
    """float16 teacher embeddings (DataComp npz keys) of content records.

    Captions mix their described content with caption-specific noise by ``quality``; an image that
    shows its caption as text also carries the caption's content (CLIP reads rendered text).
    """
    kind = content["kind"].astype(np.int64)
    lang = content["lang"].astype(np.int64)
    tpl = content["template"].astype(np.int64)
    described = world.described(kind, lang, tpl)
    z_txt = world.text_content(
        caption_latents(content), described, kind=kind, lang=lang, num_phrase=tpl
    )
    q = content["quality"].astype(np.float64)[:, None]
    z_txt = _unit(q * z_txt + np.sqrt(1 - q * q) * _unit(noise["xi"]))
    z_img = world.image_content(latents_of(content))
    rt = content["rendered_text"]
    if rt.any():
        z_img[rt] = _unit(z_img[rt] + 0.9 * z_txt[rt])
    return world.teacher_embeddings(z_img, z_txt, noise)
