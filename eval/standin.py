"""Stand-in evaluation sets: all 40 DataComp tasks, small, generated, in DataComp's exact layouts.

``clipsift evalsets standin --data-dir DIR`` writes, for every entry of the ``datacomp38`` task
list, what DataComp's ``download_evalsets.py`` would leave in ``DIR``:

* webdataset tasks: ``wds_<key>_test/`` with ``classnames.txt``,
  ``zeroshot_classification_templates.txt``, ``test/nshards.txt`` and ``test/<i>.tar`` (members
  ``<key>.png`` + ``<key>.cls``; the WILDS and fairness sets add ``<key>.npy``, one int64 row
  of the real metadata fields: FMoW ``region, year, y`` with six regions, the last "Other";
  Camelyon17 ``hospital, slide, y`` on test slides 20-29; iWildCam's nine fields; Dollar Street
  ``income_ds, income_meta, region`` with four income groups; GeoDE ``region, country``;
  FairFace/UTKFace ``age, gender, race, race_binary`` with ``objective:text`` class and template
  lines for the objectives race, gender, age and toxic);
* Flickr, MSCOCO and WinoGAViL: Hugging Face ``datasets`` caches under ``DIR/hf_cache`` that
  ``datasets.load_dataset("nlphuji/<name>", split="test", cache_dir=DIR/hf_cache)`` opens
  offline, with the real columns (``image``, ``caption`` (five per image), ``sentids``,
  ``img_id``, ``filename``; WinoGAViL ``cue``, ``candidates``, ``associations``,
  ``candidate_images``, ... with 5, 6, 10 and 12 candidates).

Images are rendered from the synthetic world, and each task's classes are an attribute of that
world (concept, shape, colour, texture, count, printed word), so a model trained on a synthetic
pool scores above chance on several of them. Sizes are small (``n`` images per task) and classes
are capped at ``max_classes``; the layouts, metadata fields and group structures are the real
ones, so every code path of ``evaluate`` runs. Everything is derived from ``seed``.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from clipsift.errors import ClipsiftError, MissingDependencyError
from clipsift.eval.tasks import EvalTask, load_tasks
from clipsift.io import atomic_dir, write_json
from clipsift.log import get_logger

log = get_logger("eval.standin")

IMAGE_SIDE = 64
RETRIEVAL_MIN = 10
N_TEMPLATES = 8  # prompts per classification task (of the tiny suite's 16)
MARKER = "standin.json"
VERSION = 4  # 2: the world's caption frames as templates; 3-4: WILDS/fairness classes are learnable attributes

# attribute of the synthetic world that plays the classes of each classification task
ATTRIBUTE = {
    "vtab/caltech101": "concept", "cifar10": "concept", "vtab/cifar100": "concept",
    "vtab/clevr_count_all": "count", "vtab/clevr_closest_object_distance": "shape", "country211": "concept",
    "vtab/dtd": "texture", "vtab/eurosat": "colour", "fgvc_aircraft": "concept", "food101": "concept",
    "gtsrb": "shape", "imagenet1k": "concept", "imagenet_sketch": "concept", "imagenetv2": "concept",
    "imagenet-a": "concept", "imagenet-o": "concept", "imagenet-r": "concept",
    "vtab/kitti_closest_vehicle_distance": "count", "mnist": "word", "objectnet": "concept",
    "vtab/flowers": "colour", "vtab/pets": "concept", "voc2007": "concept", "vtab/pcam": "texture",
    "renderedsst2": "word", "vtab/resisc45": "texture", "cars": "concept", "stl10": "concept",
    "sun397": "concept", "vtab/svhn": "word",
    # group tasks on attributes a tiny model partly learns, so their per-group values differ
    "wilds/iwildcam": "colour", "wilds/camelyon17": "texture", "wilds/fmow": "count",
    "fairness/dollar_street": "texture", "fairness/geode": "count",
}
HF_NAMES = {
    "retrieval/flickr_1k_test_image_text_retrieval": "flickr_1k_test_image_text_retrieval",
    "retrieval/mscoco_2014_5k_test_image_text_retrieval": "mscoco_2014_5k_test_image_text_retrieval",
    "misc/winogavil": "winogavil",
}
# metadata fields (npy column order) and group structures of the WILDS and fairness sets
FMOW_REGIONS = ("Asia", "Europe", "Africa", "Americas", "Oceania", "Other")
FAIRFACE_RACES = ("East Asian", "White", "Latino_Hispanic", "Southeast Asian", "Black", "Indian", "Middle Eastern")
UTKFACE_RACES = ("White", "Black", "Asian", "Indian", "Others")
FAIRFACE_AGES = ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70")
UTKFACE_AGES = FAIRFACE_AGES
GENDERS = ("man", "woman")
NONHUMAN = ("animal", "gorilla", "chimpanzee", "orangutan")  # toxic classes 14-17
CRIME = ("thief", "criminal", "suspicious person")  # toxic classes 18+
WORDS = {  # printed-word classes (the class name is drawn on the image)
    "mnist": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    "vtab/svhn": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    "renderedsst2": ("negative", "positive"),
}
TEMPLATES = {"word": ("a photo of the word {c}.", "the text {c}.", "a sign that says {c}")}


def _world(world=None, seed: int = 0):
    from clipsift.synth import World

    return world if world is not None else World(seed)


def _classes(world, attr: str, key: str, k: int, rng) -> tuple[list[str], np.ndarray]:
    """(class names, attribute value of each class) for ``k`` classes of ``attr``."""
    from clipsift.synth import vocab

    if attr == "word":
        names = list(WORDS[key])
        return names, np.arange(len(names))
    values = {"concept": world.concept_names, "shape": list(vocab.SHAPES_PLURAL), "colour": list(world.colours),
              "texture": list(world.textures), "count": list(vocab.COUNT_WORDS)}[attr]
    k = min(k, len(values))
    ids = np.sort(rng.choice(len(values), size=k, replace=False)) if attr == "concept" else np.arange(k)
    return [values[i] for i in ids], ids


def _render(world, attr: str, value_ids: np.ndarray, rng, texts=None) -> np.ndarray:
    lat = world.sample_latents(len(value_ids), rng)
    if attr in ("concept", "shape", "colour", "texture"):
        lat[attr] = value_ids
    elif attr == "count":
        lat["count"] = value_ids + 1
    if attr == "shape":
        lat["count"] = rng.integers(2, 6, len(value_ids))  # plural class names
    return world.render(lat, size=IMAGE_SIDE, texts=texts)


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")  # lossless: every reader decodes the same pixels
    return buf.getvalue()


def _write_shards(test_dir: Path, images: np.ndarray, labels: np.ndarray, meta: np.ndarray | None, n_shards: int) -> None:
    """``test/<i>.tar`` (consecutive slices) and ``test/nshards.txt``."""
    bounds = np.linspace(0, len(images), n_shards + 1).astype(int)
    for s in range(n_shards):
        with tarfile.open(test_dir / f"{s}.tar", "w") as tar:
            for i in range(bounds[s], bounds[s + 1]):
                members = {"png": _png(images[i]), "cls": str(int(labels[i])).encode()}
                if meta is not None:
                    buf = io.BytesIO()
                    np.save(buf, meta[i].astype(np.int64))
                    members["npy"] = buf.getvalue()
                for ext in ("cls", "npy", "png"):
                    if ext in members:
                        info = tarfile.TarInfo(f"s{i:07d}.{ext}")
                        info.size = len(members[ext])
                        tar.addfile(info, io.BytesIO(members[ext]))
    (test_dir / "nshards.txt").write_text(f"{n_shards}\n")


def _metadata(key: str, labels: np.ndarray, rng) -> np.ndarray:
    """Rows of the real metadata fields (see the module docstring) for ``labels``."""
    n = len(labels)
    if key == "wilds/iwildcam":  # location, sequence, year, month, day, hour, minute, second, y
        return np.stack([rng.integers(0, 6, n), rng.integers(0, 50, n), rng.integers(2013, 2016, n), rng.integers(1, 13, n),
                         rng.integers(1, 29, n), rng.integers(0, 24, n), rng.integers(0, 60, n), rng.integers(0, 60, n), labels], 1)
    if key == "wilds/camelyon17":  # hospital, slide, y: the test split is hospital 2, slides 20-29
        return np.stack([np.full(n, 2), rng.integers(20, 30, n), labels], 1)
    if key == "wilds/fmow":  # region (5 = Other, rare), year (OOD test: 14, 15), y
        region = rng.choice(6, size=n, p=[0.26, 0.26, 0.16, 0.26, 0.04, 0.02])
        region[rng.integers(0, n)] = 5  # at least one "Other" image, as in the real test split
        return np.stack([region, rng.integers(14, 16, n), labels], 1)
    if key == "fairness/dollar_street":  # income_ds (4 income groups), income_meta (monthly USD), region
        income = rng.integers(0, 4, n)
        return np.stack([income, (rng.random(n) * 10 ** (1 + income)).astype(np.int64) + 27, rng.integers(0, 4, n)], 1)
    if key == "fairness/geode":  # region (6), country
        region = rng.integers(0, 6, n)
        return np.stack([region, region * 3 + rng.integers(0, 3, n)], 1)
    raise ClipsiftError(f"{key}: no stand-in metadata")


def _face_task(world, key: str, n: int, rng):
    """FairFace/UTKFace: images (race = colour, gender = shape, age = count), class/template lines, metadata."""
    races = FAIRFACE_RACES if key == "fairness/fairface" else UTKFACE_RACES
    ages = FAIRFACE_AGES
    toxic = [f"{r} {g}" for r in FAIRFACE_RACES for g in GENDERS] + list(NONHUMAN) + list(CRIME)
    classes = ([f"race:{r}" for r in races] + [f"gender:{g}" for g in GENDERS] + [f"age:{a}" for a in ages]
               + [f"toxic:{t}" for t in toxic])
    templates = ["race:a photo of a {c} person.", "race:a {c} face.", "gender:a photo of a {c}.",
                 "age:a photo of a person aged {c}.", "age:a {c} year old face.", "toxic:a photo of a {c}."]
    race = rng.integers(0, len(races), n)
    gender = rng.integers(0, 2, n)
    age = rng.integers(0, len(ages), n)
    lat = world.sample_latents(n, rng)
    lat["colour"] = race % len(world.colours)
    lat["shape"] = gender
    lat["count"] = age % 5 + 1
    meta = np.stack([age, gender, race, (race != 1).astype(np.int64)], 1)  # age, gender, race, race_binary
    return world.render(lat, size=IMAGE_SIDE), classes, templates, meta


def _classification_task(world, task: EvalTask, n: int, max_classes: int, rng):
    attr = ATTRIBUTE[task.key]
    k = task.num_classes or 10
    if k > 5:  # 2, 4 and 5 classes kept: acc5 is None below 5 classes
        k = max(5, min(k, max_classes))
    names, value_ids = _classes(world, attr, task.key, k, rng)
    labels = np.arange(n) % len(names)
    rng.shuffle(labels)
    texts = [names[c] for c in labels] if attr == "word" else None
    images = _render(world, attr, value_ids[labels], rng, texts=texts)
    return images, labels, names, _templates(world, attr, rng)


def _templates(world, attr: str, rng) -> list[str]:
    """The tiny suite's prompt ensembles (the world's own caption frames, which a model trained on
    a synthetic pool has seen) for world attributes; fixed prompts for printed words."""
    if attr == "word":
        return list(TEMPLATES["word"])
    from clipsift.eval.tiny_suite import templates

    return templates(world, attr, rng)[:N_TEMPLATES]


def _write_wds(out: Path, world, task: EvalTask, n: int, max_classes: int, rng) -> None:
    with atomic_dir(out / task.folder) as tmp:
        (tmp / "test").mkdir()
        meta = None
        if task.key in ("fairness/fairface", "fairness/utkface"):
            images, classes, templates, meta = _face_task(world, task.key, n, rng)
            labels = meta[:, 2]  # the real sets' cls is not read by DataComp's FairFace evaluator
        else:
            images, labels, classes, templates = _classification_task(world, task, n, max_classes, rng)
            if task.key.startswith(("wilds/", "fairness/")):
                meta = _metadata(task.key, labels, rng)
        (tmp / "classnames.txt").write_text("\n".join(classes) + "\n")
        (tmp / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
        _write_shards(tmp / "test", images, labels, meta, 2 if n >= 4 else 1)


# ---- Hugging Face datasets -----------------------------------------------------------------------
def _datasets():
    try:
        import datasets
    except ImportError as exc:
        raise MissingDependencyError("stand-in retrieval sets are Hugging Face datasets; pip install datasets") from exc
    return datasets


def _image_cell(img: np.ndarray) -> dict:
    return {"bytes": _png(img), "path": None}


def _retrieval_rows(world, n: int, rng) -> dict:
    lat = world.sample_latents(n, rng)
    caps = np.stack([world.captions(lat, rng, lang="en") for _ in range(5)], 1)  # five captions per image
    images = world.render(lat, size=IMAGE_SIDE)
    return {
        "image": [_image_cell(im) for im in images],
        "filename": [f"{100000 + i}.jpg" for i in range(n)],
        "caption": [[str(c) for c in row] for row in caps],
        "sentids": [[str(5 * i + j) for j in range(5)] for i in range(n)],
        "img_id": [str(i) for i in range(n)],
    }


def _winogavil_rows(world, n: int, rng) -> dict:
    """Cue = a colour; associations = the candidates drawn in that colour (1-4 of them)."""
    sizes = np.array([5, 6, 10, 12])[np.arange(n) % 4]
    rows = {k: [] for k in ("ID", "cue", "candidates", "associations", "candidate_images", "num_associations",
                            "num_candidates", "score_fool_the_ai", "solvers_jaccard_mean", "solvers_jaccard_std")}
    for i, m in enumerate(sizes):
        cue = int(rng.integers(0, len(world.colours)))
        n_assoc = int(rng.integers(1, 5 if m >= 10 else 4))
        lat = world.sample_latents(int(m), rng)
        others = np.array([c for c in range(len(world.colours)) if c != cue])
        lat["colour"] = rng.choice(others, size=int(m))
        pos = rng.choice(int(m), size=n_assoc, replace=False)
        lat["colour"][pos] = cue
        names = [f"{world.concept_names[int(c)]}_{i}_{j}" for j, c in enumerate(lat["concept"])]
        rows["ID"].append(i)
        rows["cue"].append(world.colours[cue].capitalize() if i % 3 == 0 else world.colours[cue])
        rows["candidates"].append(names)
        rows["associations"].append([names[j] for j in sorted(pos)])
        rows["candidate_images"].append([_image_cell(im) for im in world.render(lat, size=IMAGE_SIDE)])
        rows["num_associations"].append(n_assoc)
        rows["num_candidates"].append(int(m))
        rows["score_fool_the_ai"].append(float(rng.integers(0, 100)))
        rows["solvers_jaccard_mean"].append(float(rng.random()))
        rows["solvers_jaccard_std"].append(float(rng.random() * 0.2))
    return rows


def _hf_features(name: str):
    ds = _datasets()
    strings = ds.Sequence(ds.Value("string"))
    if name == "winogavil":
        return ds.Features({"ID": ds.Value("int64"), "cue": ds.Value("string"), "candidates": strings,
                            "associations": strings, "candidate_images": ds.Sequence(ds.Image()),
                            "num_associations": ds.Value("int64"), "num_candidates": ds.Value("int64"),
                            "score_fool_the_ai": ds.Value("float64"), "solvers_jaccard_mean": ds.Value("float64"),
                            "solvers_jaccard_std": ds.Value("float64")})
    return ds.Features({"image": ds.Image(), "filename": ds.Value("string"), "caption": strings,
                        "sentids": strings, "img_id": ds.Value("string")})


def hf_cache_dir(hf_cache: Path, name: str) -> Path:
    """The folder ``load_dataset("nlphuji/<name>", cache_dir=hf_cache)`` reads offline."""
    return Path(hf_cache) / f"nlphuji___{name}" / "default" / "0.0.0" / "standin"


def _write_hf(hf_cache: Path, name: str, rows: dict) -> None:
    """One arrow file + dataset_info.json in the datasets cache layout (the offline cache builder's input)."""
    ds = _datasets()
    dataset = ds.Dataset.from_dict(rows, features=_hf_features(name), split=ds.Split.TEST)
    dest = hf_cache_dir(hf_cache, name)
    with atomic_dir(dest) as tmp:
        writer = ds.arrow_writer.ArrowWriter(features=dataset.features, path=str(tmp / f"{name}-test.arrow"))
        for batch in dataset.with_format("arrow").iter(batch_size=64):
            writer.write_table(batch)
        num_examples, num_bytes = writer.finalize()
        writer.close()
        info = ds.DatasetInfo(description=f"clipsift stand-in for nlphuji/{name}", features=dataset.features,
                              builder_name=name, dataset_name=name, config_name="default", version="0.0.0")
        info.splits = ds.SplitDict(dataset_name=name)
        info.splits.add(ds.SplitInfo(name="test", num_bytes=num_bytes, num_examples=num_examples, dataset_name=name))
        info.write_to_directory(str(tmp))
    for stale in dest.parent.iterdir():  # one cached version only: load_dataset takes the newest
        if stale != dest and stale.is_dir():
            shutil.rmtree(stale)


def _write_hf_task(out: Path, world, task: EvalTask, n: int, rng) -> None:
    name = HF_NAMES[task.key]
    # recall@10 needs at least 10 images (DataComp's retrieval metrics fail below that)
    rows = _winogavil_rows(world, n, rng) if name == "winogavil" else _retrieval_rows(world, max(n, RETRIEVAL_MIN), rng)
    _write_hf(out / "hf_cache", name, rows)


# ---- entry point --------------------------------------------------------------------------------
def make_standin(data_dir, *, seed: int = 0, n: int = 32, max_classes: int = 20, world=None,
                 tasks: list[str] | None = None, overwrite: bool = False) -> Path:
    """Write the stand-in sets of every ``datacomp38`` task (or ``tasks``) under ``data_dir``.

    ``n`` images (retrieval: images with five captions; WinoGAViL: examples) per task; classes
    capped at ``max_classes`` (the real count when smaller). Reuses a folder made with the same
    parameters; another one needs ``overwrite``.
    """
    if n < 2:
        raise ClipsiftError(f"--n {n}: a stand-in set needs at least 2 images per task")
    world = _world(world, seed)
    out = Path(data_dir)
    todo = load_tasks("datacomp38")
    if tasks:
        unknown = sorted(set(tasks) - {t.key for t in todo})
        if unknown:
            raise ClipsiftError(f"unknown DataComp task(s) {unknown}; see clipsift/eval/datacomp_tasks.tsv")
        todo = [t for t in todo if t.key in tasks]
    marker = {"format": "clipsift-datacomp-standin", "version": VERSION, "seed": seed, "n": n,
              "max_classes": max_classes, "world_seed": world.seed, "n_concepts": world.n_concepts}
    have: list[str] = []
    if (out / MARKER).exists() and not overwrite:
        old = json.loads((out / MARKER).read_text())
        have = old.pop("tasks", [])
        if old != marker:
            raise ClipsiftError(f"{out}: holds stand-in sets made with other parameters; pass --overwrite or use another folder")
        todo = [t for t in todo if t.key not in have]
        if not todo:
            return out
    out.mkdir(parents=True, exist_ok=True)
    done = list(have)
    for index, task in enumerate(load_tasks("datacomp38")):
        if task not in todo:
            continue
        rng = np.random.default_rng([seed, world.seed, index])
        if task.key in HF_NAMES:
            _write_hf_task(out, world, task, n, rng)
        else:
            _write_wds(out, world, task, n, max_classes, rng)
        done.append(task.key)
        log.info("stand-in: wrote %s", task.key)
    write_json(out / MARKER, {**marker, "tasks": done})
    return out


def load_hf(name: str, data_dir) -> object:
    """``datasets.load_dataset("nlphuji/<name>", split="test", cache_dir=<data_dir>/hf_cache)`` offline."""
    from clipsift.eval.zeroshot import _hf_dataset

    return _hf_dataset(name, str(data_dir))
