"""The synthetic world: concepts, attribute vocabularies, phenomenon rates and the teacher map.

Everything is a pure function of the world's parameters (seed, number of concepts, Zipf exponent,
rates), so ``world.json`` holds only those plus readable copies of the vocabularies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from clipsift.errors import ParamError, PoolError
from clipsift.synth import text, vocab

WORLD_FORMAT = "clipsift-synth-world"
WORLD_VERSION = 1

LATENT_DTYPE = np.dtype(
    [
        ("concept", "<i4"),
        ("shape", "u1"),
        ("colour", "u1"),
        ("texture", "u1"),
        ("count", "u1"),
        ("layout", "<u4"),
        ("variant", "u1"),
    ]
)

DEFAULT_RATES = {
    "short_caption": 0.07,  # one/two-word captions
    "generic_caption": 0.06,  # "click here", "photo 1234", ...
    "mismatched": 0.15,  # caption describes another sample's content
    "lang_de": 0.10,  # share of normal captions in each non-English language
    "lang_fr": 0.09,
    "lang_es": 0.09,
    "rendered_text": 0.04,  # image shows its caption as text
    "small_image": 0.15,  # min(original side) < 200
    "extreme_aspect": 0.04,  # max/min side > 3
    "faces": 0.06,  # rows with 1-3 face boxes
    "exact_dup": 0.03,  # share of rows in exact-duplicate groups (originals included)
    "near_dup": 0.03,  # share of rows in near-duplicate groups
    "download_fail": 0.05,  # image shards only: failed_to_download rows
}

# The tiny track's world, fixed before any method was measured on it (docs/tiny_track.md lists
# each rate's source). Concepts: 32 nouns with Zipf exponent 1.0; concept frequencies in web
# image-text pools are long-tailed (Udandarao et al. 2024, arXiv:2404.04125; Parashar et al. 2024,
# arXiv:2401.12425), the exponent is the classic Zipf value, not a fit. Duplicates: "roughly 700
# million images, or about 30%, of LAION-2B's images are likely duplicated" (Webster et al. 2023,
# arXiv:2303.12733), so 30% of the rows sit in duplicate groups, a third exact and two thirds near
# copies (re-encoded, resized). Copy counts are heavy-tailed (Webster et al. publish the histogram;
# a few images are repeated very often): group sizes follow P(s) ~ s^-2 for s >= 2, one item
# holding at most 2% of the pool; the exponent is a modelling choice, not a fit.
TRACK_WORLD = {
    "n_concepts": 32,
    "zipf": 1.0,
    "rates": {"exact_dup": 0.10, "near_dup": 0.20},
    "dup_power": 2.0,
    "dup_max_share": 0.02,
    "concept_mark": "badge",
}
CONCEPT_MARKS = ("glyph", "badge")
# badge colours: saturated hues a small CNN tells apart at 64 px (concept i = an unordered pair)
BADGE_RGB = np.array(
    [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
     (70, 240, 240), (20, 20, 20), (250, 190, 212), (128, 128, 0)],
    dtype=np.float32,
)
TAIL_SHARE = 0.25  # the tail group: the rarest quarter of the concepts by pool frequency

COUNT_PROBS = np.array([0.35, 0.25, 0.2, 0.12, 0.08])
ATTR_WEIGHTS = np.array(
    [1.0, 0.5, 0.5, 0.4, 0.4], dtype=np.float64
)  # concept, shape, colour, texture, count
GENERIC_WEIGHT = 0.5
MODELS = {"b32": 512, "l14": 768}


@dataclass(frozen=True)
class Teacher:
    """Constants of the teacher map for one CLIP architecture (see :meth:`World.embed`)."""

    dim: int
    gap: float  # norm of the modality-gap offset
    gap_cos: float  # cosine between the image and text offsets
    noise: float  # norm of the sample-specific residual
    align: float  # how much of the content subspace the text tower shares with the image tower
    share: float  # correlation of this model's residual with the l14 residual
    perceive: (
        float  # per-model distortion of what the image shows (decorrelates b32 and l14 scores)
    )


TEACHERS = {
    "l14": Teacher(dim=768, gap=1.0, gap_cos=0.32, noise=1.3, align=0.95, share=1.0, perceive=0.3),
    "b32": Teacher(dim=512, gap=1.0, gap_cos=0.40, noise=1.2, align=0.93, share=0.5, perceive=0.45),
}


@dataclass
class World:
    """A seeded synthetic web crawl: concept vocabulary, attributes, rates and teacher embeddings.

    ``World(seed)`` builds everything; ``World.from_json(path)`` rebuilds the world of a pool.
    """

    seed: int = 0
    n_concepts: int = 300
    zipf: float = 0.8
    rates: dict = field(default_factory=dict)
    latent_dim: int = 64
    noise_dim: int = 96
    # duplicate group sizes: None = 2 + geometric(0.6), at most 10 (the default world); a float a =
    # power law P(s) ~ s^-a for s >= 2, at most max(10, dup_max_share * rows) members
    dup_power: float | None = None
    dup_max_share: float = 0.02
    # how images show their concept: "glyph" = the concept's 4x4 glyph on every object (the default
    # world); "badge" = the glyph plus a two-colour badge in the top-left corner, a signature the
    # tiny track's model can learn (the glyph alone was not learned even from clean data)
    concept_mark: str = "glyph"

    def __post_init__(self):
        self.seed = int(self.seed)
        if self.dup_power is not None and not float(self.dup_power) > 1.0:
            raise ParamError(f"dup_power={self.dup_power}: must be above 1 (or None for the default sizes)")
        if self.concept_mark not in CONCEPT_MARKS:
            raise ParamError(f"concept_mark={self.concept_mark!r}: must be one of {list(CONCEPT_MARKS)}")
        if not 0.0 < float(self.dup_max_share) <= 1.0:
            raise ParamError(f"dup_max_share={self.dup_max_share}: must be within (0, 1]")
        if not 2 <= self.n_concepts <= len(vocab.NOUNS):
            raise ParamError(
                f"n_concepts={self.n_concepts}: must be between 2 and {len(vocab.NOUNS)}"
            )
        unknown = set(self.rates) - set(DEFAULT_RATES)
        if unknown:
            raise ParamError(
                f"unknown synthetic rate(s) {sorted(unknown)}; known: {sorted(DEFAULT_RATES)}"
            )
        self.rates = {**DEFAULT_RATES, **{k: float(v) for k, v in self.rates.items()}}
        for k, v in self.rates.items():
            if not 0.0 <= v <= 1.0:
                raise ParamError(f"synthetic rate {k}={v}: must be within [0, 1]")
        if self.rates["lang_de"] + self.rates["lang_fr"] + self.rates["lang_es"] > 1:
            raise ParamError("synthetic rates lang_de + lang_fr + lang_es must not exceed 1")
        if self.rates["short_caption"] + self.rates["generic_caption"] > 1:
            raise ParamError("synthetic rates short_caption + generic_caption must not exceed 1")
        rng = np.random.default_rng([self.seed, 0x5EED])
        nouns = vocab.NOUNS[: self.n_concepts]
        self.nouns = nouns
        self.concept_names = [n["name"] for n in nouns]
        self.shapes = list(vocab.SHAPES)
        self.colours = [c[0] for c in vocab.COLOURS]
        self.colour_rgb = np.array([c[1] for c in vocab.COLOURS], dtype=np.float32)
        self.textures = [t[0] for t in vocab.TEXTURES]
        self.counts = list(vocab.COUNTS)
        self.languages = list(vocab.LANGUAGES)
        # long-tailed concept frequencies; which noun is frequent depends on the seed
        rank = rng.permutation(self.n_concepts)
        w = 1.0 / (rank + 1.0) ** self.zipf
        self.concept_freq = w / w.sum()
        self._concept_cdf = np.cumsum(self.concept_freq)
        self._concept_cdf[-1] = 1.0
        self.glyphs = _glyph_codes(self.n_concepts, rng)
        self.badges = _badge_pairs(self.n_concepts, self.seed) if self.concept_mark == "badge" else None
        # content space: one unit vector per attribute value
        d = self.latent_dim
        self.U = {
            "concept": _unit(rng.standard_normal((self.n_concepts, d))),
            "shape": _unit(rng.standard_normal((len(self.shapes), d))),
            "colour": _unit(rng.standard_normal((len(self.colours), d))),
            "texture": _unit(rng.standard_normal((len(self.textures), d))),
            "count": _unit(rng.standard_normal((len(self.counts), d))),
        }
        self.u_generic = _unit(rng.standard_normal(d))
        self.U_lang = _unit(rng.standard_normal((len(self.languages), d)))
        self.U_generic_phrase = _unit(rng.standard_normal((len(vocab.GENERIC_CAPTIONS), d)))
        self._W = {m: self._teacher_weights(m, rng) for m in ("b32", "l14")}
        self.words = text.WordTables(nouns)
        self._described = text.described_table()
        self._n_templates = text.template_count_table()

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        """JSON-able parameters plus readable vocabularies (``from_json`` needs only the first keys)."""
        return {
            "format": WORLD_FORMAT,
            "version": WORLD_VERSION,
            "seed": self.seed,
            "n_concepts": self.n_concepts,
            "zipf": self.zipf,
            "rates": self.rates,
            "latent_dim": self.latent_dim,
            "noise_dim": self.noise_dim,
            "dup_power": self.dup_power,
            "dup_max_share": self.dup_max_share,
            "concept_mark": self.concept_mark,
            "tail_concepts": [int(i) for i in self.tail_concepts()],
            "concepts": [
                {
                    "id": i,
                    "name": n["name"],
                    "plural": n["plural"],
                    "de": n["de"],
                    "fr": n["fr"],
                    "es": n["es"],
                    "frequency": float(self.concept_freq[i]),
                    "glyph": int(self.glyphs[i] @ (1 << np.arange(16))),
                }
                for i, n in enumerate(self.nouns)
            ],
            "shapes": self.shapes,
            "colours": [
                {"name": c, "rgb": [int(x) for x in rgb]}
                for c, rgb in zip(self.colours, self.colour_rgb)
            ],
            "textures": self.textures,
            "counts": self.counts,
            "languages": self.languages,
            "generic_captions": list(vocab.GENERIC_CAPTIONS),
        }

    @classmethod
    def from_json(cls, path) -> World:
        """Rebuild the world saved as ``world.json`` by :func:`clipsift.synth.make_pool`."""
        path = Path(path)
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PoolError(
                f"{path}: cannot read world file ({exc}); pass the world.json of a synthetic pool"
            ) from exc
        if obj.get("format") != WORLD_FORMAT or obj.get("version") != WORLD_VERSION:
            raise PoolError(
                f"{path}: not a clipsift synthetic world (format/version); pass the world.json of a synthetic pool"
            )
        world = cls(
            seed=obj["seed"],
            n_concepts=obj["n_concepts"],
            zipf=obj["zipf"],
            rates=obj["rates"],
            latent_dim=obj["latent_dim"],
            noise_dim=obj["noise_dim"],
            dup_power=obj.get("dup_power"),
            dup_max_share=obj.get("dup_max_share", 0.02),
            concept_mark=obj.get("concept_mark", "glyph"),
        )
        names = [c["name"] for c in obj.get("concepts", [])]
        if names and names != world.concept_names:
            raise PoolError(
                f"{path}: concept list differs from this clipsift version's vocabulary; regenerate the pool"
            )
        return world

    def tail_concepts(self, share: float = TAIL_SHARE) -> np.ndarray:
        """Ids of the rarest ``share`` of the concepts by frequency (at least one), rarest first."""
        k = max(1, int(round(share * self.n_concepts)))
        return np.argsort(self.concept_freq, kind="stable")[:k]

    # ------------------------------------------------------------------ sampling
    def sample_latents(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` image contents (structured array, LATENT_DTYPE): Zipf concepts, uniform attributes."""
        out = np.zeros(n, dtype=LATENT_DTYPE)
        out["concept"] = np.searchsorted(self._concept_cdf, rng.random(n), side="right")
        out["shape"] = rng.integers(0, len(self.shapes), n)
        out["colour"] = rng.integers(0, len(self.colours), n)
        out["texture"] = rng.integers(0, len(self.textures), n)
        out["count"] = 1 + np.searchsorted(np.cumsum(COUNT_PROBS)[:-1], rng.random(n), side="right")
        out["layout"] = rng.integers(0, 1 << 32, n, dtype=np.uint32)
        return out

    def captions(
        self, latents: np.ndarray, rng: np.random.Generator, lang: str = "en"
    ) -> np.ndarray:
        """Clean captions describing ``latents`` with random templates of ``lang`` (object array of str)."""
        if lang not in self.languages:
            raise ParamError(f"lang={lang!r}: must be one of {self.languages}")
        n = len(latents)
        li = self.languages.index(lang)
        template = rng.integers(0, 1 << 16, n) % self._n_templates[text.KIND_NORMAL, li]
        arr = self._fill(
            np.full(n, text.KIND_NORMAL), np.full(n, li), template, latents, np.zeros(n, np.int64)
        )
        return np.array(arr.to_pylist(), dtype=object)

    def described(self, kind: np.ndarray, lang: np.ndarray, template: np.ndarray) -> np.ndarray:
        """(n, 5) bool: which attributes each caption template mentions."""
        return self._described[kind, lang, template]

    def _fill(self, kind, lang, template, cap: np.ndarray, num: np.ndarray) -> pa.Array:
        cols = {a: cap[a].astype(np.int64) for a in text.ATTRIBUTES}
        cols["num"] = num
        return text.fill(self.words, kind, lang, template, cols)

    # ------------------------------------------------------------------ rendering
    def render(self, latents: np.ndarray, size: int = 64, texts=None) -> np.ndarray:
        """uint8 images (N, size, size, 3) drawn from ``latents``; ``texts[i]`` (str or None) is printed on image i."""
        from clipsift.synth.render import render

        return render(self, latents, size=size, texts=texts)

    # ------------------------------------------------------------------ teacher
    def image_content(self, latents: np.ndarray) -> np.ndarray:
        """Unit content vectors (n, latent_dim) of images: weighted attribute vectors plus a generic part."""
        z = GENERIC_WEIGHT * np.broadcast_to(self.u_generic, (len(latents), self.latent_dim))
        for w, a in zip(ATTR_WEIGHTS, text.ATTRIBUTES):
            idx = latents[a].astype(np.int64) - (1 if a == "count" else 0)
            z = z + w * self.U[a][idx]
        return _unit(z)

    def text_content(
        self, cap: np.ndarray, described: np.ndarray, kind=None, lang=None, num_phrase=None
    ) -> np.ndarray:
        """Unit content vectors of captions mentioning the ``described`` attributes of ``cap``.

        Generic captions point at a shared "photo" direction; non-English ones are pulled
        towards a language direction (an English-trained CLIP reads them poorly).
        """
        n = len(cap)
        z = GENERIC_WEIGHT * np.broadcast_to(self.u_generic, (n, self.latent_dim))
        for j, (w, a) in enumerate(zip(ATTR_WEIGHTS, text.ATTRIBUTES)):
            idx = cap[a].astype(np.int64) - (1 if a == "count" else 0)
            z = z + (w * described[:, j])[:, None] * self.U[a][idx]
        z = _unit(z)
        if lang is not None:
            foreign = lang > 0
            if foreign.any():
                z[foreign] = _unit(0.6 * z[foreign] + 0.6 * self.U_lang[lang[foreign]])
        if kind is not None:
            gen = kind == text.KIND_GENERIC
            if gen.any():
                z[gen] = _unit(self.u_generic + 0.8 * self.U_generic_phrase[num_phrase[gen]])
        return z

    def project(
        self,
        model: str,
        z_img: np.ndarray,
        z_txt: np.ndarray,
        eta_img: np.ndarray,
        eta_txt: np.ndarray,
    ):
        """Teacher embeddings (float64, unit rows) of one model from content vectors and residual noise."""
        W_img, W_txt = self._W[model]
        D, m = self.latent_dim, self.noise_dim
        img = z_img @ W_img[:D] + eta_img @ W_img[D : D + m] + W_img[-1]
        txt = z_txt @ W_txt[:D] + eta_txt @ W_txt[D : D + m] + W_txt[-1]
        return _unit(img), _unit(txt)

    def embed(
        self, latents: np.ndarray, rng: np.random.Generator | None = None, described=None
    ) -> dict:
        """Teacher embeddings of images ``latents`` and of clean English captions describing them.

        ``described``: attribute names the captions mention (default all of concept, shape, colour,
        texture, count; e.g. ``("concept",)`` for "a photo of a dog" prompts). Without ``rng`` the
        sample-specific residual is zero (prototype embeddings). Returns float16 unit vectors under
        the DataComp npz keys ``b32_img``, ``b32_txt``, ``l14_img``, ``l14_txt``.
        """
        n = len(latents)
        names = text.ATTRIBUTES if described is None else tuple(described)
        bad = set(names) - set(text.ATTRIBUTES)
        if bad:
            raise ParamError(f"described={sorted(bad)}: attributes are {list(text.ATTRIBUTES)}")
        mask = np.broadcast_to(
            np.array([a in names for a in text.ATTRIBUTES]), (n, len(text.ATTRIBUTES))
        )
        noise = draw_noise(self, n, rng) if rng is not None else zero_noise(self, n)
        z_img = self.image_content(latents)
        z_txt = self.text_content(latents, mask)
        return self.teacher_embeddings(z_img, z_txt, noise)

    def teacher_embeddings(self, z_img, z_txt, noise: dict) -> dict:
        """float16 unit embeddings for both models from content vectors and residuals.

        Computed in float64 and rounded once to float16, so BLAS kernels or thread counts that
        change the last float64 bits (practically) never change the stored values.
        """
        out = {}
        for model in ("b32", "l14"):
            share = TEACHERS[model].share
            keep = float(np.sqrt(1.0 - share * share))
            e_img = share * noise["img"].astype(np.float64) + keep * noise["img_b"]
            e_txt = share * noise["txt"].astype(np.float64) + keep * noise["txt_b"]
            z_seen = _unit(z_img + TEACHERS[model].perceive * _unit(noise[f"perc_{model}"]))
            img, txt = self.project(model, z_seen, z_txt, e_img, e_txt)
            out[f"{model}_img"] = img.astype(np.float16)
            out[f"{model}_txt"] = txt.astype(np.float16)
        return out

    def _teacher_weights(self, model: str, rng: np.random.Generator):
        """(latent+noise+1, dim) image and text matrices built from one orthonormal basis."""
        t = TEACHERS[model]
        D, m = self.latent_dim, self.noise_dim
        # random unit columns are nearly orthogonal in 512/768 dims; no QR, so no LAPACK
        # thread-count effects on the weights
        basis = rng.standard_normal((t.dim, 2 * D + 2 * m + 2))
        basis /= np.linalg.norm(basis, axis=0, keepdims=True)
        P, R = basis[:, :D], basis[:, D : 2 * D]
        Q_img, Q_txt = basis[:, 2 * D : 2 * D + m], basis[:, 2 * D + m : 2 * D + 2 * m]
        g_img, g_other = basis[:, -2], basis[:, -1]
        g_txt = t.gap_cos * g_img + np.sqrt(1 - t.gap_cos**2) * g_other
        P_txt = t.align * P + np.sqrt(1 - t.align**2) * R
        scale = t.noise / np.sqrt(m)
        W_img = np.concatenate([P.T, scale * Q_img.T, t.gap * g_img[None]], axis=0)
        W_txt = np.concatenate([P_txt.T, scale * Q_txt.T, t.gap * g_txt[None]], axis=0)
        return W_img, W_txt


def draw_noise(world: World, n: int, rng: np.random.Generator) -> dict:
    """Sample-specific residuals: image/text, shared and b32-only parts, plus caption-content noise."""
    m, d = world.noise_dim, world.latent_dim
    return {
        "img": rng.standard_normal((n, m), dtype=np.float32),
        "img_b": rng.standard_normal((n, m), dtype=np.float32),
        "txt": rng.standard_normal((n, m), dtype=np.float32),
        "txt_b": rng.standard_normal((n, m), dtype=np.float32),
        "xi": rng.standard_normal((n, d), dtype=np.float32),
        "perc_b32": rng.standard_normal((n, d), dtype=np.float32),
        "perc_l14": rng.standard_normal((n, d), dtype=np.float32),
    }


def zero_noise(world: World, n: int) -> dict:
    m, d = world.noise_dim, world.latent_dim
    z = np.zeros((n, m), dtype=np.float32)
    zd = np.zeros((n, d), dtype=np.float32)
    return {"img": z, "img_b": z, "txt": z, "txt_b": z, "xi": zd, "perc_b32": zd, "perc_l14": zd}


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, in float64."""
    x = np.asarray(x, dtype=np.float64)
    sq = np.einsum("...i,...i->...", x, x)[..., None]
    return x / np.sqrt(np.maximum(sq, 1e-300))


def _badge_pairs(k: int, seed: int) -> np.ndarray:
    """(k, 2) badge colour indices: distinct unordered pairs (a <= b), from their own seeded stream."""
    n = len(BADGE_RGB)
    pairs = np.array([(a, b) for a in range(n) for b in range(a, n)], dtype=np.int64)
    if k > len(pairs):
        raise ParamError(f"n_concepts={k}: a badge world has at most {len(pairs)} concepts")
    rng = np.random.default_rng([seed, 0xBAD6E])
    return pairs[rng.permutation(len(pairs))[:k]]


def _glyph_codes(k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` distinct 4x4 bit patterns at Hamming distance >= 3 (a concept's visual signature)."""
    popcount = np.unpackbits(
        np.arange(1 << 16, dtype=">u2").view(np.uint8).reshape(-1, 2), axis=1
    ).sum(1)
    codes = np.zeros(0, dtype=np.int64)
    while len(codes) < k:
        for c in rng.integers(1, (1 << 16) - 1, 64):
            if not 4 <= popcount[c] <= 12 or (codes.size and popcount[codes ^ c].min() < 3):
                continue
            codes = np.append(codes, c)
            if len(codes) == k:
                break
    bits = 1 << np.arange(16)
    return (codes[:, None] & bits) > 0
