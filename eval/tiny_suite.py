"""The tiny suite: held-out zero-shot tasks rendered from the synthetic world.

Each task is written in DataComp's evaluation-set layout (``wds_<key>_test/`` with
``classnames.txt``, ``zeroshot_classification_templates.txt``, ``test/nshards.txt``,
``test/0.tar``; retrieval sets add ``dataset_type.txt``), so it runs through the same
clip_benchmark path as DataComp's 38 tasks. Images come from the pool's own renderer at the pool's
image size, with a separate random stream, so no evaluation image is a training image.
Classification tasks are class-balanced: the concept under test is drawn uniformly, everything
else from the world's distribution. The attribute frames (shape, colour, texture, count) also
serve the DataComp stand-in sets (``clipsift.eval.standin``).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from clipsift.errors import ClipsiftError
from clipsift.eval.tasks import EvalTask, load_tasks
from clipsift.io import atomic_dir, write_json
from clipsift.log import get_logger

log = get_logger("eval.tiny_suite")

IMAGE_SIDE = 64  # the synthetic pool's stored image side
JPEG_QUALITY = 95
SUITE_MARKER = "tiny_suite.json"
SUITE_VERSION = 6  # 4: concept and tail-concept tasks; colour and rendered text dropped. 5: twice the concept and tail images (less evaluation noise). 6: shape, texture and count dropped (not learnable from data quality: docs/tiny_track.md)

# Prompt ensembles in the world's own caption frames: each template fixes the attributes the task
# does not ask about to one random combination, and the classifier averages over 16 of them (as
# CLIP's 80 ImageNet prompts average over photo styles). ``{c}`` is the class name.
FRAMES = {
    "shape": ("{count} {colour} {c} on a {texture} background", "a {texture} background with {count} {colour} {c}"),
    "colour": ("{count} {c} {shapes} on a {texture} background", "a {texture} background with {count} {c} {shapes}"),
    "texture": ("{count} {colour} {shapes} on a {c} background", "a {c} background with {count} {colour} {shapes}"),
    "count": ("{c} {colour} {shapes} on a {texture} background", "a {texture} background with {c} {colour} {shapes}"),
    # concepts: the world's singular-noun caption frames (the ImageNet analogue)
    "concept": ("{c} clipart, {colour}, {texture} background, free download", "cute {colour} {c} {shape} illustration",
                "new {c} design in {colour}, {shape} shape", "{c} icon set, {colour} {shapes} on {texture} paper"),
}
FRAMES["concept_tail"] = FRAMES["concept"]
N_TEMPLATES = 16


def templates(world, name: str, rng: np.random.Generator) -> list[str]:
    """Zero-shot templates of task ``name`` (16 random fillings of its caption frames)."""
    from clipsift.synth import vocab

    frames = FRAMES[name]
    out = []
    for i in range(N_TEMPLATES):
        out.append(frames[i % len(frames)].format(
            c="{c}",
            count=vocab.COUNT_WORDS[1 + rng.integers(0, 4)],  # plural frames: two..five
            colour=world.colours[rng.integers(0, len(world.colours))],
            shapes=vocab.SHAPES_PLURAL[rng.integers(0, len(vocab.SHAPES))],
            texture=world.textures[rng.integers(0, len(world.textures))],
            shape=vocab.SHAPES[rng.integers(0, len(vocab.SHAPES))],
        ))
    return out


def _classes(world, name: str) -> list[str]:
    from clipsift.synth import vocab

    if name in ("concept", "concept_tail"):
        return list(world.concept_names)
    # the attribute tasks dropped in version 6, still rendered for studies (benchmarks/dropped_tasks.py)
    if name == "shape":
        return list(vocab.SHAPES_PLURAL)
    if name == "texture":
        return list(world.textures)
    if name == "count":
        return list(vocab.COUNT_WORDS)
    raise ClipsiftError(f"tiny task {name!r} has no class definition")


def _jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _write_tar(path: Path, images: np.ndarray, labels=None, captions=None) -> None:
    with tarfile.open(path, "w") as tar:
        for i, img in enumerate(images):
            key = f"s{i:07d}"
            members = {"jpg": _jpeg(img)}
            if labels is not None:
                members["cls"] = str(int(labels[i])).encode()
            if captions is not None:
                members["txt"] = "\n".join(c.replace("\n", " ") for c in captions[i]).encode()
            for ext in sorted(members):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(members[ext])
                tar.addfile(info, io.BytesIO(members[ext]))


def _classification(world, name: str, n: int, rng: np.random.Generator):
    """(images, labels, classnames) with the concept (or attribute) under test balanced over its
    classes; everything else drawn from the world's distribution."""
    classes = _classes(world, name)
    if name == "concept_tail":  # the full classifier, images of the rarest concepts only
        tail = world.tail_concepts()
        labels = tail[np.arange(n) % len(tail)]
    else:
        labels = np.arange(n) % len(classes)
    rng.shuffle(labels)
    lat = world.sample_latents(n, rng)
    if name == "shape":
        lat["shape"] = labels
        lat["count"] = rng.integers(2, 6, n)  # plural class names
    elif name == "texture":
        lat["texture"] = labels
    elif name == "count":
        lat["count"] = labels + 1
    else:
        lat["concept"] = labels
    return world.render(lat, size=IMAGE_SIDE), labels, classes


def _retrieval(world, n: int, rng: np.random.Generator):
    lat = world.sample_latents(n, rng)
    caps = world.captions(lat, rng, lang="en")
    return world.render(lat, size=IMAGE_SIDE), [[str(c)] for c in caps]


def _world_of(pool_or_world):
    from clipsift.synth import World

    if isinstance(pool_or_world, World):
        return pool_or_world
    p = Path(pool_or_world)
    if p.is_dir():
        p = p / "world.json"
    if not p.exists():
        raise ClipsiftError(f"{p}: no world.json; pass a synthetic pool folder (clipsift pool make) or its world.json")
    return World.from_json(p)


def make_tiny_suite(out_dir, pool_or_world, *, seed: int = 1234, overwrite: bool = False, size: int | None = None,
                    tasks: Sequence[EvalTask] | None = None) -> Path:
    """Write every tiny task under ``out_dir`` (an evaluation ``--data-dir``); returns out_dir.

    Reuses an existing suite made from the same world, seed, size and tasks unless ``overwrite``;
    ``size`` replaces the task list's sample counts (small suites for tests); ``tasks`` replaces the
    suite's task list (keys ``tiny/<frame>``, e.g. the dropped ``tiny/count`` for a study).
    """
    world = _world_of(pool_or_world)
    out = Path(out_dir)
    marker = {"format": "clipsift-tiny-suite", "version": SUITE_VERSION, "world_seed": world.seed,
              "n_concepts": world.n_concepts, "zipf": world.zipf, "seed": seed, "size": size}
    if tasks is not None:
        marker["tasks"] = [[t.key, t.size] for t in tasks]  # a key and its image count
    if (out / SUITE_MARKER).exists() and not overwrite:
        if json.loads((out / SUITE_MARKER).read_text()) == marker:
            return out
        raise ClipsiftError(f"{out}: holds a tiny suite of another world or seed; pass --overwrite or another folder")
    out.mkdir(parents=True, exist_ok=True)
    for t_index, task in enumerate(load_tasks("tiny") if tasks is None else tasks):
        name = task.key.split("/", 1)[1]
        rng = np.random.default_rng([seed, world.seed, t_index])
        n = size or task.size or 500
        with atomic_dir(out / task.folder) as tmp:
            (tmp / "test").mkdir()
            if name == "retrieval":
                images, caps = _retrieval(world, n, rng)
                _write_tar(tmp / "test" / "0.tar", images, captions=caps)
                (tmp / "dataset_type.txt").write_text("retrieval\n")
            else:
                images, labels, classes = _classification(world, name, n, rng)
                _write_tar(tmp / "test" / "0.tar", images, labels=labels)
                (tmp / "classnames.txt").write_text("\n".join(classes) + "\n")
                (tmp / "zeroshot_classification_templates.txt").write_text("\n".join(templates(world, name, rng)) + "\n")
            (tmp / "test" / "nshards.txt").write_text("1\n")
        log.info("tiny suite: wrote %s (%d samples)", task.folder, n)
    write_json(out / SUITE_MARKER, marker)
    return out
