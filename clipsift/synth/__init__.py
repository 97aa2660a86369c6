"""Synthetic DataComp pools with known ground truth: clipsift's built-in default data.

A seeded *world* models a web crawl: ``n_concepts`` real English nouns with Zipf-distributed
frequencies, images showing ``count`` coloured shapes that carry the concept's 4x4 glyph on a
textured background, and alt-text captions built from templates. Planted phenomena (rates in
``World.rates``): mismatched captions (describing another sample's content), generic captions
("click here", "photo 1234"), one/two-word captions, German/French/Spanish captions, images that
show their caption as text, tiny (<200 px) and extreme-aspect (>3:1) originals, face boxes, exact
and near duplicate groups, failed downloads (image shards only).

A fixed *teacher* maps each sample's latent content to CLIP-like embeddings for two models
(``b32`` 512-d, ``l14`` 768-d): image = gap offset + projected content + residual, text = a second
gap offset + (partially aligned) projection of what the caption describes + residual. Matched
pairs score ≈0.3, mismatched ≈0.12-0.15, generic captions ≈0.15-0.18; images of one concept
cluster; b32 and l14 scores correlate but differ.

Public API::

    from clipsift.synth import make_pool, World

    make_pool(out_dir, rows, *, seed=0, images=False, shard_rows=10_000, workers=None, world=None) -> dict

``world="track"`` builds the tiny track's world (``world.TRACK_WORLD``: 32 Zipf(1.0) concepts,
web-like heavy-tailed duplicates, a concept badge on every image); a dict sets any World parameter.
``clipsift.synth.quality`` scores subsets against the truth file (seedless figures, oracle subset).

writes ``out_dir/metadata/<stem>.parquet|.npz`` (DataComp layout; scores equal the cosine of the
stored float16 embeddings), ``out_dir/truth.parquet`` (one row per sample in pool order: uid,
concept, concept_name, shape, colour, texture, count, lang, is_mismatched, is_generic_caption,
is_short_caption, has_rendered_text, is_small_image, is_extreme_aspect, dup_group, dup_kind,
is_dup_copy, download_ok, ...), ``out_dir/world.json`` and, with ``images=True``, ``out_dir/shards``
as img2dataset writes them (64 px longest side). Same seed ⇒ bit-identical files for any ``workers``.

``World``::

    w = World(seed=0)                       # or World.from_json("pool/world.json")
    w.concept_names, w.shapes, w.colours, w.textures, w.counts, w.languages, w.concept_freq
    lat = w.sample_latents(n, rng)          # structured array: concept, shape, colour, texture,
                                            # count, layout (render seed), variant
    w.captions(lat, rng, lang="en")         # object array of clean captions
    w.render(lat, size=64, texts=None)      # uint8 (n, size, size, 3)
    w.embed(lat, rng=None, described=None)  # {"b32_img","b32_txt","l14_img","l14_txt"}: float16 unit
                                            # rng=None: no residual; described=("concept",) for
                                            # prompt-like captions naming only the concept
"""

from clipsift.synth.pool import make_pool
from clipsift.synth.world import World

__all__ = ["World", "make_pool"]
