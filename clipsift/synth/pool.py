"""``make_pool``: write a synthetic DataComp pool (metadata, ground truth, optional image shards).

Plan first (shard stems, duplicate groups and their "bank" of shared contents, computed once), then
generate shards independently — in worker processes or inline — each from its own seeded streams,
so the output is bit-identical for a seed whatever the number of workers.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipsift.errors import ParamError, PoolError
from clipsift.io import atomic_dir, write_json
from clipsift.log import get_logger, progress
from clipsift.synth import content as C
from clipsift.synth import shards as S
from clipsift.synth import text
from clipsift.synth.world import MODELS, World, draw_noise

log = get_logger("synth")

EMB_KEYS = ("b32_img", "b32_txt", "l14_img", "l14_txt")
_EMB_SLICES = {}
_o = 0
for _k in EMB_KEYS:
    _d = MODELS[_k[:3]]
    _EMB_SLICES[_k] = (_o, _o + _d)
    _o += _d
EMB_WIDTH = _o
BANK_BLOCK = 8192
PARALLEL_MIN_ROWS = 50_000

METADATA_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("url", pa.string()),
        ("text", pa.string()),
        ("original_width", pa.int64()),
        ("original_height", pa.int64()),
        ("sha256", pa.string()),
        ("clip_b32_similarity_score", pa.float64()),
        ("clip_l14_similarity_score", pa.float64()),
        ("face_bboxes", pa.list_(pa.list_(pa.float64()))),
    ]
)
DUP_KINDS = ("exact", "near")


def make_pool(
    out_dir,
    rows: int,
    *,
    seed: int = 0,
    images: bool = False,
    shard_rows: int = 10_000,
    workers: int | None = None,
    world: dict | str | None = None,
) -> dict:
    """Write a synthetic DataComp pool with ``rows`` samples under ``out_dir``; return a summary.

    ``world``: :class:`World` parameters other than the seed (``"track"`` = ``TRACK_WORLD``, the
    tiny track's world); None = the default world.

    Layout: ``metadata/<stem>.parquet`` + ``.npz`` (DataComp's), ``truth.parquet`` (ground truth,
    pool order), ``world.json`` (parameters to rebuild :class:`World`), and with ``images``
    ``shards/`` as img2dataset writes them. The folder is built next to ``out_dir`` and renamed.
    """
    t0 = time.perf_counter()
    rows, shard_rows = int(rows), int(shard_rows)
    if rows < 1:
        raise ParamError(f"rows={rows}: a pool needs at least one row")
    if shard_rows < 1:
        raise ParamError(f"shard_rows={shard_rows}: must be at least 1")
    out_dir = Path(out_dir)
    _check_target(out_dir)
    world = World(seed, **world_params(world))
    _WORLDS[_world_key(_world_params(world))] = world
    plan = _plan(world, rows, shard_rows)
    n_shards = len(plan["sizes"])
    if workers is None:
        workers = _default_workers(rows, n_shards, images)
    workers = max(1, int(workers))
    log.info(
        "synthetic pool: %d rows in %d shards, seed %d, images=%s, %d worker(s)",
        rows,
        n_shards,
        seed,
        images,
        workers,
    )
    with atomic_dir(out_dir) as tmp:
        work = tmp / ".work"
        (tmp / "metadata").mkdir()
        (work / "truth").mkdir(parents=True)
        if images:
            (tmp / "shards").mkdir()
        bank_path = work / "bank_emb.npy"
        bank = _write_bank(world, plan["n_groups"], bank_path)
        jobs = _jobs(world, plan, bank, bank_path, tmp, images)
        results = _run(jobs, workers)
        _merge_truth(work / "truth", sorted(plan["stems"]), tmp / "truth.parquet")
        shutil.rmtree(work)
        write_json(
            tmp / "world.json",
            {
                **world.to_dict(),
                "pool": {
                    "rows": rows,
                    "shard_rows": shard_rows,
                    "shards": n_shards,
                    "images": bool(images),
                    "image_side": S.IMAGE_SIDE if images else None,
                    "dup_groups": plan["n_groups"],
                },
            },
        )
    seconds = time.perf_counter() - t0
    summary = {
        "out_dir": str(out_dir),
        "rows": rows,
        "seed": int(seed),
        "shards": n_shards,
        "shard_rows": shard_rows,
        "images": bool(images),
        "workers": workers,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds, 1) if seconds > 0 else None,
        "dup_groups": plan["n_groups"],
    }
    for key in results[0]["counts"]:
        summary[key] = int(sum(r["counts"][key] for r in results))
    if images:
        summary["image_shards"] = int(sum(len(r["successes"]) for r in results))
        summary["images_written"] = int(sum(sum(r["successes"]) for r in results))
    log.info("synthetic pool written to %s in %.1f s", out_dir, seconds)
    return summary


def world_params(world: dict | str | None) -> dict:
    """World keyword arguments of a ``make_pool(world=...)`` value."""
    from clipsift.synth.world import TRACK_WORLD

    if world is None:
        return {}
    if isinstance(world, str):
        if world != "track":
            raise ParamError(f"world={world!r}: use 'track' (the tiny track's world) or a dict of World parameters")
        return dict(TRACK_WORLD)
    params = dict(world)
    if "seed" in params:
        raise ParamError("world parameters must not hold 'seed'; pass seed= to make_pool")
    return params


def _dup_sizes(world: World, rng: np.random.Generator, target: int, rows: int) -> np.ndarray:
    """Sizes (>= 2) of duplicate groups holding about ``target`` rows."""
    if world.dup_power is None:
        return np.minimum(2 + rng.geometric(0.6, target // 2 + 1) - 1, 10)
    cap = max(10, int(world.dup_max_share * rows))
    s = np.arange(2, cap + 1, dtype=np.float64)
    cdf = np.cumsum(s ** -float(world.dup_power))
    cdf /= cdf[-1]
    return 2 + np.searchsorted(cdf, rng.random(target // 2 + 1), side="right")


def _default_workers(rows: int, n_shards: int, images: bool) -> int:
    """One process per CPU, but only when there is enough work to amortise their start-up."""
    if rows < PARALLEL_MIN_ROWS // (5 if images else 1):
        return 1
    return min(n_shards, os.cpu_count() or 1)


def _check_target(out_dir: Path) -> None:
    """Refuse to replace a non-empty folder that is not a synthetic pool."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise PoolError(
                f"{out_dir}: exists and is not a folder; pass a new or empty folder for the pool"
            )
        if any(out_dir.iterdir()) and not (out_dir / "world.json").exists():
            raise PoolError(
                f"{out_dir}: folder is not empty and holds no synthetic pool; pass a new or empty folder"
            )


# ---------------------------------------------------------------------------------------- plan
def _plan(world: World, rows: int, shard_rows: int) -> dict:
    """Shard sizes and stems, pool order, and duplicate groups with their members' positions."""
    seed = world.seed
    n_shards = math.ceil(rows / shard_rows)
    sizes = np.full(n_shards, shard_rows, dtype=np.int64)
    sizes[-1] = rows - shard_rows * (n_shards - 1)
    stems = [np.random.default_rng([seed, s, 0x57E4]).bytes(16).hex() for s in range(n_shards)]
    if len(set(stems)) != n_shards:
        raise PoolError("shard stem collision; use another seed")
    pool_rank = np.argsort(np.argsort(np.array(stems)))
    sizes_in_pool_order = sizes[np.argsort(np.array(stems))]
    pool_start = np.concatenate([[0], np.cumsum(sizes_in_pool_order)[:-1]])[pool_rank]
    # duplicate groups: sizes 2.., members at random global positions (shard*shard_rows + row)
    rng = np.random.default_rng([seed, 0xD0B, rows, shard_rows])
    group_sizes, group_kind = [], []
    for k, kind in enumerate(DUP_KINDS):
        target = int(round(rows * world.rates[f"{kind}_dup"]))
        if target < 2:
            continue
        gs = _dup_sizes(world, rng, target, rows)
        cut = int(np.searchsorted(np.cumsum(gs), target)) + 1
        gs = gs[:cut]
        gs[-1] -= max(0, int(gs.sum()) - target)
        gs = gs[gs >= 2]
        group_sizes.append(gs)
        group_kind.append(np.full(len(gs), k, dtype=np.int8))
    if group_sizes:
        gsz = np.concatenate(group_sizes)
        gkind = np.concatenate(group_kind)
    else:
        gsz, gkind = np.zeros(0, np.int64), np.zeros(0, np.int8)
    total = int(gsz.sum())
    if total > rows:
        raise PoolError(
            f"duplicate rates need {total} rows but the pool has {rows}; lower the dup rates"
        )
    pos = np.sort(rng.choice(rows, size=total, replace=False)) if total else np.zeros(0, np.int64)
    pos = rng.permutation(pos)  # random assignment of positions to group members
    group = np.repeat(np.arange(len(gsz)), gsz)
    shard = pos // shard_rows
    row = pos % shard_rows
    ppos = pool_start[shard] + row
    order = np.lexsort((ppos, group))  # members of each group in pool order
    rank_in_group = np.empty(total, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(gsz)[:-1]]) if len(gsz) else np.zeros(0, np.int64)
    rank_in_group[order] = np.arange(total) - np.repeat(starts, gsz)
    return {
        "sizes": sizes,
        "stems": stems,
        "shard_rows": shard_rows,
        "n_groups": len(gsz),
        "group_kind": gkind,
        "member_shard": shard,
        "member_row": row,
        "member_group": group,
        "member_rank": rank_in_group,
    }


# ---------------------------------------------------------------------------------------- bank
def _bank_content(world: World, n_groups: int, block: int) -> tuple[np.ndarray, dict]:
    rng = np.random.default_rng([world.seed, 0xBA4C, block])
    n = min(BANK_BLOCK, n_groups - block * BANK_BLOCK)
    return C.draw_content(world, n, rng), draw_noise(world, n, rng)


def _write_bank(world: World, n_groups: int, path: Path) -> np.ndarray:
    """Content shared by each duplicate group; its embeddings go to a .npy read by the workers."""
    emb = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n_groups, EMB_WIDTH))
    contents = []
    for b in range(math.ceil(n_groups / BANK_BLOCK)):
        content, noise = _bank_content(world, n_groups, b)
        e = C.embeddings(world, content, noise)
        a = b * BANK_BLOCK
        for k in EMB_KEYS:
            lo, hi = _EMB_SLICES[k]
            emb[a : a + len(content), lo:hi] = e[k]
        contents.append(content)
    emb.flush()
    del emb
    return np.concatenate(contents) if contents else np.zeros(0, dtype=C.CONTENT_DTYPE)


# ---------------------------------------------------------------------------------------- jobs
def _jobs(
    world: World, plan: dict, bank: np.ndarray, bank_path: Path, tmp: Path, images: bool
) -> list[dict]:
    stems = plan["stems"]
    sizes = plan["sizes"]
    order = np.argsort(np.array(stems))
    tars = -(-sizes // S.SAMPLES_PER_SHARD)
    first_tar = np.empty(len(sizes), dtype=np.int64)
    first_tar[order] = np.concatenate([[0], np.cumsum(tars[order])[:-1]])
    by_shard = np.argsort(plan["member_shard"], kind="stable")
    bounds = np.searchsorted(plan["member_shard"][by_shard], np.arange(len(sizes) + 1))
    jobs = []
    for s in range(len(sizes)):
        m = by_shard[bounds[s] : bounds[s + 1]]
        groups = plan["member_group"][m]
        jobs.append(
            {
                "world": _world_params(world),
                "shard": s,
                "stem": stems[s],
                "rows": int(sizes[s]),
                "out": str(tmp),
                "images": images,
                "first_tar": int(first_tar[s]),
                "bank_path": str(bank_path),
                "dup_rows": plan["member_row"][m],
                "dup_groups": groups,
                "dup_kind": plan["group_kind"][groups],
                "dup_rank": plan["member_rank"][m],
                "dup_content": bank[groups],
            }
        )
    return jobs


@contextmanager
def _single_threaded_children():
    """Worker processes each use one BLAS thread (they run side by side)."""
    keys = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run(jobs: list[dict], workers: int) -> list[dict]:
    bar = progress(total=sum(j["rows"] for j in jobs), desc="synth pool", unit="row")
    results = []
    try:
        if workers <= 1 or len(jobs) == 1:
            for job in jobs:
                results.append(make_shard(job))
                bar.update(job["rows"])
        else:
            ctx = multiprocessing.get_context("spawn")
            with (
                _single_threaded_children(),
                ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex,
            ):
                for job, res in zip(jobs, ex.map(make_shard, jobs)):
                    results.append(res)
                    bar.update(job["rows"])
    finally:
        bar.close()
    return results


_WORLDS: dict = {}


def _world_params(world: World) -> dict:
    return {
        "seed": world.seed,
        "n_concepts": world.n_concepts,
        "zipf": world.zipf,
        "rates": world.rates,
        "dup_power": world.dup_power,
        "dup_max_share": world.dup_max_share,
        "concept_mark": world.concept_mark,
    }


def _world_key(params: dict) -> tuple:
    return (
        params["seed"],
        params["n_concepts"],
        params["zipf"],
        tuple(sorted(params["rates"].items())),
        params.get("dup_power"),
        params.get("dup_max_share", 0.02),
        params.get("concept_mark", "glyph"),
    )


def _world(params: dict) -> World:
    """The World of a job, built once per process."""
    key = _world_key(params)
    if key not in _WORLDS:
        _WORLDS[key] = World(**params)
    return _WORLDS[key]


def make_shard(job: dict) -> dict:
    """Generate and write one metadata shard (+ its truth part and image shards)."""
    world = _world(job["world"])
    seed, s, n = world.seed, job["shard"], job["rows"]
    rng = np.random.default_rng([seed, s, 1])
    content = C.draw_content(world, n, rng)
    noise = draw_noise(world, n, rng)
    side = np.random.default_rng([seed, s, 2])
    uid_raw = side.integers(0, 256, (n, 16), dtype=np.uint8)
    ok = side.random(n) >= world.rates["download_fail"]
    fail = side.integers(0, len(S.FAIL_MESSAGES), n)
    url_rng = np.random.default_rng([seed, s, 3])

    # duplicate groups: members take the group's shared content
    rows_d, kind_d, rank_d = job["dup_rows"], job["dup_kind"], job["dup_rank"]
    shared = job["dup_content"]
    near = kind_d == 1
    fresh_sha = content["sha"][rows_d].copy()
    content[rows_d] = shared
    content["sha"][rows_d[near]] = fresh_sha[near]  # a re-encoded copy has other bytes
    if world.dup_power is None:
        content["variant"][rows_d[near]] = np.minimum(rank_d[near], 255)
    else:  # big groups: copies cycle through 8 mild re-encodings (rank 0 is the original)
        content["variant"][rows_d[near]] = np.where(rank_d[near] > 0, 1 + (rank_d[near] - 1) % 8, 0)

    captions = C.captions(world, content)
    emb = C.embeddings(world, content, noise)
    if len(rows_d):
        bank = np.load(job["bank_path"], mmap_mode="r")
        idx = np.asarray(job["dup_groups"])
        srt = np.argsort(idx, kind="stable")
        shared_emb = np.empty((len(idx), EMB_WIDTH), dtype=np.float16)
        shared_emb[srt] = bank[idx[srt]]
        pert = np.random.default_rng([seed, s, 4])
        copies = near & (rank_d > 0)
        delta = pert.uniform(0.05, 0.25, len(idx))
        for k in EMB_KEYS:
            lo, hi = _EMB_SLICES[k]
            vec = shared_emb[:, lo:hi].astype(np.float64)
            if k.endswith("_img"):
                nu = pert.standard_normal(vec.shape)
                nu /= np.linalg.norm(nu, axis=1, keepdims=True)
                moved = vec + delta[:, None] * nu
                moved /= np.linalg.norm(moved, axis=1, keepdims=True)
                vec = np.where(copies[:, None], moved, vec)
            emb[k][rows_d] = vec.astype(np.float16)

    # float64 products of float16 values are exact and so are their sums (|partial sums| < 2,
    # multiples of 2**-48): the score is the exact cosine of the stored vectors, in any order
    scores = {
        m: np.einsum(
            "ij,ij->i", emb[f"{m}_img"].astype(np.float64), emb[f"{m}_txt"].astype(np.float64)
        )
        for m in ("b32", "l14")
    }
    uids = text.hex_strings(uid_raw)
    urls = text.urls(content["lang"], url_rng)
    bboxes = _face_bboxes(content)
    table = pa.Table.from_arrays(
        [
            uids,
            urls,
            captions,
            pa.array(content["width"], pa.int64()),
            pa.array(content["height"], pa.int64()),
            text.hex_strings(content["sha"]),
            pa.array(scores["b32"], pa.float64()),
            pa.array(scores["l14"], pa.float64()),
            bboxes,
        ],
        schema=METADATA_SCHEMA,
    )
    out = Path(job["out"])
    pq.write_table(table, out / "metadata" / f"{job['stem']}.parquet")
    write_npz(out / "metadata" / f"{job['stem']}.npz", emb)

    truth = _truth(world, job, content, uids, n, ok)
    pq.write_table(truth, out / ".work" / "truth" / f"{job['stem']}.parquet")

    successes: list[int] = []
    if job["images"]:
        lat = C.latents_of(content)
        cap_list = captions.to_pylist()
        texts = [cap_list[i] if content["rendered_text"][i] else None for i in range(n)]
        squares = world.render(lat, size=S.IMAGE_SIDE, texts=texts)
        successes = S.write_shards(
            out / "shards",
            job["first_tar"],
            {
                "uid": uids.to_pylist(),
                "caption": cap_list,
                "url": urls.to_pylist(),
                "original_width": content["width"],
                "original_height": content["height"],
                "face_bboxes": bboxes.to_pylist(),
                "ok": ok,
                "fail": fail,
            },
            squares,
        )
    counts = {
        "mismatched": int(content["mismatched"].sum()),
        "generic_captions": int((content["kind"] == text.KIND_GENERIC).sum()),
        "short_captions": int((content["kind"] == text.KIND_SHORT).sum()),
        "non_english": int((content["lang"] > 0).sum()),
        "rendered_text": int(content["rendered_text"].sum()),
        "small_images": int(content["small"].sum()),
        "extreme_aspect": int(content["extreme"].sum()),
        "dup_copies": int((rank_d > 0).sum()),
    }
    return {"shard": s, "stem": job["stem"], "counts": counts, "successes": successes}


def _face_bboxes(content: np.ndarray) -> pa.Array:
    nf = content["n_faces"].astype(np.int64)
    keep = np.arange(3)[None, :] < nf[:, None]
    boxes = content["faces"][keep].reshape(-1)  # (total*4,)
    inner = pa.ListArray.from_arrays(
        pa.array(np.arange(0, boxes.size + 1, 4, dtype=np.int32)), pa.array(boxes, pa.float64())
    )
    outer_off = np.concatenate([[0], np.cumsum(nf)]).astype(np.int32)
    return pa.ListArray.from_arrays(
        pa.array(outer_off), inner, type=pa.list_(pa.list_(pa.float64()))
    )


def _truth(
    world: World, job: dict, content: np.ndarray, uids: pa.Array, n: int, ok: np.ndarray
) -> pa.Table:
    dup_group = np.full(n, -1, dtype=np.int64)
    dup_kind = np.zeros(n, dtype=np.int64)  # 0 none, 1 exact, 2 near
    is_copy = np.zeros(n, dtype=bool)
    dup_group[job["dup_rows"]] = job["dup_groups"]
    dup_kind[job["dup_rows"]] = job["dup_kind"].astype(np.int64) + 1
    is_copy[job["dup_rows"]] = job["dup_rank"] > 0
    names = pa.array(world.concept_names)
    cap_concept = content["cap_concept"].astype(np.int64)
    return pa.table(
        {
            "uid": uids,
            "stem": pa.array([job["stem"]] * n, pa.string()),
            "row": pa.array(np.arange(n, dtype=np.int64)),
            "concept": content["concept"].astype(np.int64),
            "concept_name": names.take(content["concept"].astype(np.int64)),
            "shape": pa.array(world.shapes).take(content["shape"].astype(np.int64)),
            "colour": pa.array(world.colours).take(content["colour"].astype(np.int64)),
            "texture": pa.array(world.textures).take(content["texture"].astype(np.int64)),
            "count": content["count"].astype(np.int64),
            "layout": content["layout"].astype(np.int64),
            "variant": content["variant"].astype(np.int64),
            "caption_concept": cap_concept,
            "caption_concept_name": names.take(cap_concept),
            "caption_kind": pa.array(list(text.KINDS)).take(content["kind"].astype(np.int64)),
            "caption_template": content["template"].astype(np.int64),
            "caption_quality": content["quality"].astype(np.float64),
            "lang": pa.array(world.languages).take(content["lang"].astype(np.int64)),
            "is_mismatched": content["mismatched"],
            "is_generic_caption": content["kind"] == text.KIND_GENERIC,
            "is_short_caption": content["kind"] == text.KIND_SHORT,
            "has_rendered_text": content["rendered_text"],
            "is_small_image": content["small"],
            "is_extreme_aspect": content["extreme"],
            "n_faces": content["n_faces"].astype(np.int64),
            "dup_group": dup_group,
            "dup_kind": pa.array(["", "exact", "near"]).take(dup_kind),
            "is_dup_copy": is_copy,
            "download_ok": ok,
        }
    )


def _merge_truth(folder: Path, stems_in_pool_order: list[str], dest: Path) -> None:
    """Concatenate per-shard truth parts in pool order (sorted stems) into one parquet, streaming."""
    writer = None
    try:
        for stem in stems_in_pool_order:
            part = pq.read_table(folder / f"{stem}.parquet")
            if writer is None:
                writer = pq.ParquetWriter(dest, part.schema)
            writer.write_table(part)
    finally:
        if writer is not None:
            writer.close()


_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def write_npz(path: Path, arrays: dict) -> None:
    """Uncompressed .npz like ``np.savez`` but with fixed zip timestamps (bit-reproducible)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key in EMB_KEYS:
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(arrays[key]), allow_pickle=False)
