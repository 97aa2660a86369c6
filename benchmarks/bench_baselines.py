"""Time and peak memory of every DataComp baseline on a synthetic pool, against the floor of
reading the columns it needs and, optionally, against DataComp's own ``baselines.py``.

    python benchmarks/bench_baselines.py --pool /data/p1m            # existing pool (metadata/ or its parent)
    python benchmarks/bench_baselines.py --make-pool /data/p1m --rows 1000000
    python benchmarks/bench_baselines.py --pool P --reference-cmd /path/to/run_datacomp_baselines.sh

``--reference-cmd`` is any executable taking DataComp's ``baselines.py`` flags (``--name``,
``--metadata_dir``, ``--save_path``, ...); for the image-based baselines it also gets the asset
paths in ``CLIPSIFT_BENCH_CENTROIDS`` / ``CLIPSIFT_BENCH_TARGETS``. Outputs are compared byte for byte.
``--lid-bin PATH`` measures how often the bundled ``lid.176.ftz`` and DataComp's ``lid.176.bin``
disagree on English for the pool's distinct captions; without the .bin, ``--lid-proxy`` counts the
captions whose English decision under the .ftz is close. ``--repeat N`` keeps the best of N runs of
each side (taken alternately, clipsift then reference) and prints the load average, for shared
machines.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RUNS = {  # label: (filter name, clipsift --set params, DataComp flags, columns read, npz keys)
    "no_filter": ("no_filter", [], [], ["uid"], []),
    "basic_filter": ("basic_filter", [], [], ["uid", "text", "original_width", "original_height"], []),
    "text_based": ("text_based", [], [], ["uid", "text"], []),
    "clip_score_l14_f0.3": ("clip_score", ["arch=l14", "fraction=0.3"], ["--arch", "l14", "--fraction", "0.3"], ["uid", "clip_l14_similarity_score"], []),
    "clip_score_b32_t0.3": ("clip_score", ["arch=b32", "threshold=0.3"], ["--arch", "b32", "--threshold", "0.3"], ["uid", "clip_b32_similarity_score"], []),
    "laion2b": ("laion2b", [], [], ["uid", "text", "clip_b32_similarity_score"], []),
    "image_based": ("image_based", [], ["--image_based_scale", "small"], ["uid", "text"], ["l14_img"]),
    "image_based_intersect_clip_score_l14_f0.3": (
        "image_based_intersect_clip_score", ["arch=l14", "fraction=0.3"],
        ["--image_based_scale", "small", "--arch", "l14", "--fraction", "0.3"], ["uid", "text", "clip_l14_similarity_score"], ["l14_img"],
    ),
}

_MEASURE = (
    "import resource, subprocess, sys, time; t = time.perf_counter(); rc = subprocess.run(sys.argv[1:]).returncode; "
    "w = time.perf_counter() - t; print('@@', rc, w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)"
)


def measure(cmd: list[str], env=None) -> dict:
    """Wall time and the largest resident set among the command's processes (fresh parent per run)."""
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True, env=env)
    line = [x for x in proc.stdout.splitlines() if x.startswith("@@")][-1].split()
    if int(line[1]) != 0:
        sys.stderr.write(proc.stderr[-3000:])
    return {"rc": int(line[1]), "wall_s": round(float(line[2]), 2), "peak_rss_mb": round(float(line[3]), 1)}


def best_of(cmds: list[tuple[str, list[str]]], repeat: int, env=None) -> dict[str, dict]:
    """Run each command ``repeat`` times, alternating between them; keep each one's fastest run."""
    runs: dict[str, list[dict]] = {name: [] for name, _ in cmds}
    for _ in range(repeat):
        for name, cmd in cmds:
            runs[name].append(measure(cmd, env))
    best = {}
    for name, rs in runs.items():
        ok = [r for r in rs if r["rc"] == 0] or rs
        best[name] = dict(min(ok, key=lambda r: r["wall_s"]), runs_wall_s=[r["wall_s"] for r in rs])
    return best


def _read(columns, keys, pool, shard):
    batch = pool.read(shard, columns=columns, keys=keys)
    return len(batch)


def read_floor(metadata: str, columns, keys, workers: int) -> float:
    """Seconds to read the needed columns (uids decoded) and npz keys of every shard, nothing else."""
    from functools import partial

    from clipsift.executor import LocalExecutor
    from clipsift.pool import Pool

    pool = Pool(metadata)
    t = time.perf_counter()
    rows = sum(LocalExecutor(workers, show_progress=False).map(partial(_read, tuple(columns), tuple(keys), pool), pool.shards))
    assert rows == pool.num_rows
    return time.perf_counter() - t


def image_assets(metadata: str, workdir: Path, workers: int, clusters: int) -> tuple[str, str]:
    """Centroids by `clipsift build-centroids` (sampled) and 1000 pool embeddings as stand-in targets."""
    import torch

    from clipsift.pool import Pool

    cent = workdir / "bench_centroids.pt"
    if not cent.exists():
        subprocess.run([sys.executable, "-m", "clipsift.cli", "-q", "build-centroids", "--pool", metadata, "--out", str(cent),
                        "--num-clusters", str(clusters), "--sample-ratio", "0.05", "--workers", str(workers)], check=True)
    tgt = workdir / "bench_targets.pt"
    if not tgt.exists():
        pool = Pool(metadata)
        emb = pool.read(pool.shards[-1], keys=("l14_img",)).embeddings["l14_img"]
        pick = np.random.default_rng(0).choice(len(emb), min(1000, len(emb)), replace=False)
        torch.save({"image_features": torch.from_numpy(np.asarray(emb[np.sort(pick)], dtype=np.float16))}, tgt)
    return str(cent), str(tgt)


def lid_disagreement(metadata: str, lid_bin: str) -> dict:
    """Distinct captions (LF replaced) on which the .ftz and the .bin disagree about English."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from clipsift.baselines.assets import bundled_lid_model, resolve_lid_model
    from clipsift.baselines.langid import FastTextLID
    from clipsift.pool import Pool

    pool = Pool(metadata)
    texts = pa.chunked_array([pool.read(s, columns=("text",)).column("text").combine_chunks() for s in pool.shards])
    distinct = pc.unique(pc.replace_substring(texts.combine_chunks(), "\n", " ")).to_pylist()
    ftz = np.asarray(FastTextLID(str(bundled_lid_model())).predict(distinct)) == "en"
    bin_ = np.asarray(FastTextLID(str(resolve_lid_model(lid_bin)[0])).predict(distinct)) == "en"
    return {"distinct_captions": len(distinct), "en_ftz": int(ftz.sum()), "en_bin": int(bin_.sum()),
            "disagree": int((ftz != bin_).sum()), "disagree_rate": float((ftz != bin_).mean())}


def lid_borderline(metadata: str, gaps=(0.01, 0.05, 0.1)) -> dict:
    """Proxy for the .ftz/.bin disagreement without the .bin: the captions that reach language ID in
    ``basic_filter`` whose English decision under the .ftz is close (``en`` first or second, the top
    two probabilities less than ``gap`` apart), and the rows of the kept/dropped sets they decide."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from clipsift.baselines.basic_filter import BasicFilter
    from clipsift.baselines.langid import FastTextLID, dictionary_indices
    from clipsift.pool import Pool

    pool = Pool(metadata)
    f = BasicFilter()
    block = [f.cheap_rules(pool.read(s, columns=f.columns)) for s in pool.shards]
    enc = pc.dictionary_encode(pa.concat_arrays([b[1].cast(pa.large_string()) for b in block]))
    per_caption = np.concatenate([np.bincount(b[2], minlength=len(b[1])) for b in block])
    distinct = enc.dictionary.to_pylist()
    rows = np.bincount(dictionary_indices(enc), weights=per_caption, minlength=len(distinct)).astype(np.int64)
    native = FastTextLID(f.describe_lid()["lid_model"])._model().f
    top = [native.predict(t + "\n", 2, 0.0, "strict") for t in distinct]
    gap = np.array([r[0][0] - (r[1][0] if len(r) > 1 else 0.0) for r in top])
    en1 = np.array([r[0][1] == "__label__en" for r in top])
    en2 = np.array([len(r) > 1 and r[1][1] == "__label__en" for r in top])
    out = {"captions": len(distinct), "rows": int(rows.sum()), "kept_rows": int(rows[en1].sum())}
    for g in gaps:
        close = (en1 | en2) & (gap < g)
        out[f"gap<{g}"] = {"captions": int(close.sum()), "caption_share": round(float(close.mean()), 4),
                           "kept_rows": int(rows[close & en1].sum()), "dropped_rows": int(rows[close & ~en1].sum())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", help="pool folder (its metadata/ subfolder is used when present)")
    ap.add_argument("--make-pool", help="generate a synthetic pool here first (clipsift.synth.make_pool)")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--only", default="", help="comma-separated labels of RUNS (\"none\": only the language-ID measurements)")
    ap.add_argument("--reference-cmd", help="executable running DataComp's baselines.py (outside this repository)")
    ap.add_argument("--reference-only", default="", help="labels to run the reference on (default: all selected)")
    ap.add_argument("--clusters", type=int, default=256, help="K of the bench centroids")
    ap.add_argument("--lid-bin", help="DataComp's lid.176.bin, to measure .ftz/.bin disagreement")
    ap.add_argument("--lid-proxy", action="store_true", help="count basic_filter's borderline-English captions under the .ftz")
    ap.add_argument("--repeat", type=int, default=1, help="best of N runs per side, alternating (shared machines)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    if args.make_pool:
        from clipsift.synth import make_pool

        if not Path(args.make_pool).exists():
            make_pool(args.make_pool, args.rows, seed=0, workers=args.workers)
        args.pool = args.make_pool
    root = Path(args.pool)
    metadata = str(root / "metadata") if (root / "metadata").is_dir() else str(root)
    from clipsift.pool import Pool

    n = Pool(metadata).num_rows
    work = Path(tempfile.mkdtemp(prefix="bench-baselines-"))
    labels = [] if args.only == "none" else [x for x in (args.only.split(",") if args.only else RUNS) if x]
    ref_labels = set(args.reference_only.split(",")) if args.reference_only else set(labels)
    env = dict(os.environ)
    if any("image" in x for x in labels):
        env["CLIPSIFT_BENCH_CENTROIDS"], env["CLIPSIFT_BENCH_TARGETS"] = image_assets(metadata, work, args.workers, args.clusters)
    print(f"pool {metadata}: {n} rows, {len(Pool(metadata).shards)} shards, workers {args.workers}")
    print(f"{'baseline':44s} {'kept':>9s} {'clipsift s':>10s} {'peak MB':>8s} {'floor s':>8s} {'x floor':>7s} {'ref s':>8s} {'ref MB':>7s} {'speedup':>7s} identical")
    results = {}
    for label in labels:
        name, sets, flags, columns, keys = RUNS[label]
        if name == "laion2b":
            import importlib.util

            if importlib.util.find_spec("gcld3") is None:
                print(f"{label:44s} skipped (gcld3 not installed)")
                continue
        if "image" in name:
            sets = sets + [f"centroids={env['CLIPSIFT_BENCH_CENTROIDS']}", f"targets={env['CLIPSIFT_BENCH_TARGETS']}"]
        floor = min(read_floor(metadata, columns, keys, args.workers) for _ in range(args.repeat))
        out = work / f"{label}.npy"
        cmd = [sys.executable, "-m", "clipsift.cli", "-q", "filter", name, "--pool", metadata, "--out", str(out), "--workers", str(args.workers)]
        for s in sets:
            cmd += ["--set", s]
        cmds = [("clipsift", cmd)]
        ref_out = work / f"ref_{label}.npy"
        if args.reference_cmd and label in ref_labels:
            cmds.append(("reference", [args.reference_cmd, "--name", name, "--metadata_dir", metadata, "--save_path", str(ref_out),
                                       "--num_workers", str(args.workers), *flags]))
        load_before = os.getloadavg()[0]
        runs = best_of(cmds, args.repeat, env)
        mine = runs["clipsift"]
        res = {"rows": n, "clipsift": mine, "floor_s": round(floor, 2), "loadavg_1min": [load_before, os.getloadavg()[0]]}
        if mine["rc"] == 0:
            manifest = json.loads(Path(f"{out}.json").read_text())
            res["kept"] = manifest["output_count"]
            res["filter_wall_s"] = manifest["wall_time_s"]
        if "reference" in runs:
            ref = runs["reference"]
            res["reference"] = ref
            res["identical"] = ref["rc"] == 0 and mine["rc"] == 0 and ref_out.read_bytes() == out.read_bytes()
            res["speedup"] = round(ref["wall_s"] / mine["wall_s"], 2)
        results[label] = res
        r = res.get("reference", {})
        print(f"{label:44s} {res.get('kept', -1):9d} {mine['wall_s']:10.2f} {mine['peak_rss_mb']:8.0f} {floor:8.2f} "
              f"{mine['wall_s'] / max(floor, 1e-9):7.1f} {r.get('wall_s', float('nan')):8.2f} {r.get('peak_rss_mb', float('nan')):7.0f} "
              f"{res.get('speedup', float('nan')):7.2f} {res.get('identical', '-')}  load {res['loadavg_1min'][0]:.1f}-{res['loadavg_1min'][1]:.1f}",
              flush=True)
    if args.lid_bin:
        results["lid_disagreement"] = lid_disagreement(metadata, args.lid_bin)
        print("lid.176.ftz vs lid.176.bin:", results["lid_disagreement"])
    if args.lid_proxy:
        results["lid_borderline"] = lid_borderline(metadata)
        print("lid.176.ftz borderline English (basic_filter's captions):", json.dumps(results["lid_borderline"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
