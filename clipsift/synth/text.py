"""Caption templates and their vectorised filling (pyarrow string kernels, one call per template).

A template is a format string whose fields are word slots; the slots it uses decide which latent
attributes the caption *describes*, which in turn drives the teacher text embedding.
"""

from __future__ import annotations

import string

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipsift.synth import vocab

ATTRIBUTES = ("concept", "shape", "colour", "texture", "count")

# slot -> attribute it describes (None: describes nothing in the image)
_SLOT_ATTR = {
    "noun": "concept",
    "nouns": "concept",
    "a_noun": "concept",
    "shape": "shape",
    "shapes": "shape",
    "colour": "colour",
    "texture": "texture",
    "count": "count",
    "num": None,
}

KIND_NORMAL, KIND_SHORT, KIND_GENERIC = 0, 1, 2
KINDS = ("normal", "short", "generic")

TEMPLATES = {
    (KIND_NORMAL, "en"): (
        "a photo of {count} {colour} {nouns}",
        "a photo of {count} {colour} {nouns} on a {texture} background",
        "{count} {colour} {shapes} with {a_noun} pattern on a {texture} background",
        "{colour} {nouns} on a {texture} background",
        "close-up picture of {count} {nouns} in {colour}",
        "{noun} clipart, {colour}, {texture} background, free download",
        "cute {colour} {noun} {shape} illustration",
        "{count} {nouns} arranged in {shapes}, {colour} on {texture}",
        "stock photo of {nouns}",
        "{colour} and {texture}: {count} {nouns}",
        "a {texture} background with {count} {colour} {shapes}",
        "new {noun} design in {colour}, {shape} shape",
        "an illustration of {count} {colour} {shapes}, each showing {a_noun}",
        "{noun} icon set, {colour} {shapes} on {texture} paper",
    ),
    (KIND_NORMAL, "de"): (
        "Foto: {noun} in {colour}, Hintergrund {texture}",
        "{noun} in der Farbe {colour} – hochwertige Bilder und Fotos für Ihr Zuhause",
        "Schönes Bild mit {noun}, Farbe {colour}, jetzt online kaufen",
        "{noun} ({colour}), Hintergrund: {texture}, kostenlos herunterladen",
    ),
    (KIND_NORMAL, "fr"): (
        "photo : {noun} en {colour}, fond {texture}",
        "{noun} de couleur {colour}, image de haute qualité pour votre maison",
        "belle image avec {noun}, couleur {colour}, à acheter en ligne",
        "{noun} ({colour}), fond : {texture}, téléchargement gratuit",
    ),
    (KIND_NORMAL, "es"): (
        "foto: {noun} en {colour}, fondo {texture}",
        "{noun} de color {colour}, imagen de alta calidad para tu hogar",
        "bonita imagen con {noun}, color {colour}, comprar en línea",
        "{noun} ({colour}), fondo: {texture}, descarga gratis",
    ),
    (KIND_SHORT, "en"): ("{noun}", "{nouns}", "{colour} {noun}"),
    (KIND_GENERIC, "en"): tuple(g.replace("#", "{num}") for g in vocab.GENERIC_CAPTIONS),
}


def _parse(template: str) -> list[tuple[str, str | None]]:
    """Template -> [(literal, slot or None), ...]."""
    return [(lit, field) for lit, field, _, _ in string.Formatter().parse(template)]


def described_mask(template: str) -> np.ndarray:
    """Which of ATTRIBUTES a template mentions (bool[5])."""
    slots = {f for _, f in _parse(template) if f}
    attrs = {_SLOT_ATTR[s] for s in slots}
    return np.array([a in attrs for a in ATTRIBUTES], dtype=bool)


def n_templates(kind: int, lang: str) -> int:
    return len(TEMPLATES.get((kind, lang), ()))


def template_count_table() -> np.ndarray:
    """(kinds, languages) number of templates; 0 where a kind has no template in a language."""
    return np.array(
        [[n_templates(k, lang) for lang in vocab.LANGUAGES] for k in range(len(KINDS))],
        dtype=np.int64,
    )


def described_table() -> np.ndarray:
    """(kinds, languages, max_templates, 5) described-attribute masks."""
    counts = template_count_table()
    out = np.zeros(counts.shape + (int(counts.max()), len(ATTRIBUTES)), dtype=bool)
    for (kind, lang), temps in TEMPLATES.items():
        li = vocab.LANGUAGES.index(lang)
        for t, tpl in enumerate(temps):
            out[kind, li, t] = described_mask(tpl)
    return out


class WordTables:
    """Per-language word arrays (pyarrow) indexed by latent values."""

    def __init__(self, nouns: list[dict]):
        en = [n["name"] for n in nouns]
        self.n_concepts = len(en)
        art = [("an " if w[0] in "aeiou" else "a ") + w for w in en]
        self.noun = {"en": pa.array(en)}
        for lang in ("de", "fr", "es"):
            self.noun[lang] = pa.array([n[lang] for n in nouns])
        self.nouns_en = pa.array(en + [n["plural"] for n in nouns])  # index + K*plural
        self.a_noun = pa.array(art)
        self.shapes = pa.array(list(vocab.SHAPES) + list(vocab.SHAPES_PLURAL))
        self.colour = {
            lang: pa.array(
                [
                    c[0 if lang == "en" else 2 + ["de", "fr", "es"].index(lang)]
                    for c in vocab.COLOURS
                ]
            )
            for lang in vocab.LANGUAGES
        }
        self.texture = {
            lang: pa.array([t[vocab.LANGUAGES.index(lang)] for t in vocab.TEXTURES])
            for lang in vocab.LANGUAGES
        }
        self.count = pa.array(list(vocab.COUNT_WORDS))

    def slot(self, name: str, lang: str, cols: dict[str, np.ndarray]) -> pa.Array:
        """Words for one slot, for the rows described by ``cols`` (caption latents)."""
        plural = (cols["count"] > 1).astype(np.int64)
        if name == "noun":
            return self.noun[lang].take(cols["concept"])
        if name == "nouns":
            return self.nouns_en.take(cols["concept"] + self.n_concepts * plural)
        if name == "a_noun":
            return self.a_noun.take(cols["concept"])
        if name == "shape":
            return self.shapes.take(cols["shape"].astype(np.int64))
        if name == "shapes":
            return self.shapes.take(cols["shape"].astype(np.int64) + len(vocab.SHAPES) * plural)
        if name == "colour":
            return self.colour[lang].take(cols["colour"].astype(np.int64))
        if name == "texture":
            return self.texture[lang].take(cols["texture"].astype(np.int64))
        if name == "count":
            return self.count.take(cols["count"].astype(np.int64) - 1)
        if name == "num":
            return pa.array(cols["num"]).cast(pa.string())
        raise KeyError(name)


def fill(
    tables: WordTables,
    kind: np.ndarray,
    lang: np.ndarray,
    template: np.ndarray,
    cols: dict[str, np.ndarray],
) -> pa.Array:
    """Captions for every row: group rows by (kind, lang, template), join slot words per group.

    ``cols`` holds per-row caption latents: concept, shape, colour, texture, count (1-based), num.
    """
    n = len(kind)
    key = (
        kind.astype(np.int64) * len(vocab.LANGUAGES) + lang.astype(np.int64)
    ) * 256 + template.astype(np.int64)
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    bounds = np.flatnonzero(np.diff(sorted_key)) + 1
    starts = np.concatenate([[0], bounds]) if n else np.zeros(0, np.int64)
    ends = np.concatenate([bounds, [n]]) if n else np.zeros(0, np.int64)
    parts = []
    for a, b in zip(starts, ends):
        k = int(sorted_key[a])
        t, kl = k % 256, k // 256
        kd, li = kl // len(vocab.LANGUAGES), kl % len(vocab.LANGUAGES)
        lang_name = vocab.LANGUAGES[li]
        tpl = TEMPLATES[(kd, lang_name)][t]
        idx = order[a:b]
        sub = {c: v[idx] for c, v in cols.items()}
        pieces: list = []
        for lit, slot in _parse(tpl):
            if lit:
                pieces.append(lit)
            if slot:
                pieces.append(tables.slot(slot, lang_name, sub))
        arrays = [p for p in pieces if isinstance(p, pa.Array)]
        if not arrays:  # template without slots: broadcast the literal
            parts.append(pa.array(["".join(pieces)] * (b - a), type=pa.string()))
        elif len(pieces) == 1:
            parts.append(pieces[0])
        else:
            parts.append(pc.binary_join_element_wise(*pieces, ""))
    if not parts:
        return pa.array([], type=pa.string())
    joined = pa.concat_arrays([p.cast(pa.string()) for p in parts])
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.arange(n)
    return joined.take(inverse)


def hex_strings(raw: np.ndarray) -> pa.Array:
    """(n, k) uint8 -> pyarrow strings of 2k lowercase hex chars, built from buffers (no per-row work)."""
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    n, k = raw.shape
    lut = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    chars = np.empty((n, 2 * k), dtype=np.uint8)
    chars[:, 0::2] = lut[raw >> 4]
    chars[:, 1::2] = lut[raw & 15]
    offsets = (np.arange(n + 1, dtype=np.int32) * (2 * k)).astype(np.int32)
    return pa.StringArray.from_buffers(
        n, pa.py_buffer(offsets.tobytes()), pa.py_buffer(chars.tobytes())
    )


def urls(lang: np.ndarray, rng: np.random.Generator) -> pa.Array:
    """Plausible image URLs: a domain matching the caption language, a date path, a random name."""
    n = len(lang)
    dom_pick = rng.integers(0, 1 << 16, n)
    year = rng.integers(2008, 2024, n)
    month = rng.integers(1, 13, n)
    name = hex_strings(rng.integers(0, 256, (n, 8), dtype=np.uint8))
    ext_pick = rng.integers(0, len(vocab.EXTENSIONS), n)
    domain = np.empty(n, dtype=np.int64)
    flat = []
    for li, lang_name in enumerate(vocab.LANGUAGES):
        doms = vocab.DOMAINS[lang_name]
        sel = lang == li
        domain[sel] = len(flat) + dom_pick[sel] % len(doms)
        flat.extend(doms)
    dom_arr = pa.array(flat).take(domain)
    mm = pc.utf8_lpad(pa.array(month).cast(pa.string()), 2, "0")
    ext = pa.array(list(vocab.EXTENSIONS)).take(ext_pick)
    return pc.binary_join_element_wise(
        "https://", dom_arr, "/", pa.array(year).cast(pa.string()), "/", mm, "/", name, ext, ""
    )
