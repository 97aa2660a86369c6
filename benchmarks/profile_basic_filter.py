"""CPU seconds per stage of ``basic_filter``, in one process, so the stages can be compared.

    python benchmarks/profile_basic_filter.py --pool /tmp/clipsift-bench/pool-1000000-s0

Stages: reading the four columns (uids decoded), the cheap rules (image size, words, characters),
LF replacement + per-shard de-duplication + hash bucketing of the captions still alive, the
per-bucket de-duplication across shards, the fastText calls (native time and the Python around
them), mapping the answers back to rows, and sorting + saving the result. The filter runs the
per-shard and per-bucket stages in worker processes; this script runs the same functions inline.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", required=True, help="pool folder (its metadata/ subfolder is used when present)")
    ap.add_argument("--lid-model", default=None, help="lid.176.bin (default: the bundled lid.176.ftz)")
    ap.add_argument("--parts", type=int, default=16, help="buckets (the filter uses 8 per worker)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    t_start = time.process_time()
    import pyarrow as pa
    import pyarrow.compute as pc

    from clipsift.baselines import langid
    from clipsift.baselines.basic_filter import BasicFilter, image_size_mask
    from clipsift.baselines.common import float_column, take, text_column
    from clipsift.baselines.textstats import char_counts, split_word_counts
    from clipsift.pool import Pool
    from clipsift.uids import sort_records

    cpu = Counter()
    cpu["imports"] = time.process_time() - t_start
    root = Path(args.pool)
    pool = Pool(str(root / "metadata") if (root / "metadata").is_dir() else str(root))
    f = BasicFilter(lid_model=args.lid_model)
    lid = f.lid(memoize=False)
    t = time.process_time()
    lid.load()
    cpu["model_load"] = time.process_time() - t

    native = {"s": 0.0, "calls": 0}
    model = lid._model().f

    class TimedModel:  # wraps the native call only, to split it from the Python around it
        def multilinePredict(self, lines, *rest):
            t0 = time.process_time()
            out = model.multilinePredict(lines, *rest)
            native["s"] += time.process_time() - t0
            native["calls"] += len(lines)
            return out

    lid._model = lambda: type("M", (), {"f": TimedModel()})

    block, rows_alive = [], 0
    for shard in pool.shards:
        t = time.process_time()
        batch = pool.read(shard, columns=f.columns)
        text = text_column(batch)
        w, h = float_column(batch, "original_width"), float_column(batch, "original_height")
        cpu["read"] += time.process_time() - t
        t = time.process_time()
        idx = np.flatnonzero(image_size_mask(w, h))
        idx = idx[split_word_counts(take(text, idx)) > 2]
        idx = idx[char_counts(take(text, idx)) > 5]
        cpu["cheap_rules"] += time.process_time() - t
        t = time.process_time()
        enc = pc.dictionary_encode(pc.replace_substring(take(text, idx), "\n", " "))
        captions, counts, where = langid.group_by_bucket(enc.dictionary, args.parts)
        block.append((batch.uids[idx], captions, counts, where[langid.dictionary_indices(enc)]))
        cpu["lf_replace_shard_dedup_bucket"] += time.process_time() - t
        rows_alive += len(idx)

    t = time.process_time()
    counts = np.stack([b[2] for b in block])
    starts = np.cumsum(counts, axis=1) - counts
    texts = [b[1].cast(pa.large_string()) for b in block]
    buckets = [pa.concat_arrays([x.slice(starts[s, k], counts[s, k]) for s, x in enumerate(texts)]) for k in range(args.parts)]
    cpu["gather_buckets"] = time.process_time() - t
    flags, n_distinct = [], 0
    for bucket in buckets:
        t = time.process_time()
        enc = pc.dictionary_encode(bucket)
        distinct = enc.dictionary.to_pylist()
        cpu["bucket_dedup"] += time.process_time() - t
        t = time.process_time()
        english = np.asarray(lid.predict(distinct), dtype=object) == "en"
        cpu["language_id"] += time.process_time() - t
        flags.append(english[langid.dictionary_indices(enc)])
        n_distinct += len(distinct)
    t = time.process_time()
    bucket_starts = np.cumsum(counts, axis=0) - counts
    kept = []
    for s, (u, _, _, rows) in enumerate(block):
        english = np.concatenate([flags[k][bucket_starts[s, k] : bucket_starts[s, k] + counts[s, k]] for k in range(args.parts)])
        kept.append(u[english[rows]])
    uids = np.concatenate(kept)
    cpu["map_back"] = time.process_time() - t
    t = time.process_time()
    np.save(io.BytesIO(), sort_records(uids))
    cpu["sort_and_save"] = time.process_time() - t

    cpu["language_id_native"] = native["s"]
    cpu["language_id_python"] = cpu["language_id"] - native["s"]
    res = {
        "rows": pool.num_rows,
        "rows_alive_after_cheap_rules": rows_alive,
        "captions_per_shard_distinct": int(sum(len(b[1]) for b in block)),
        "captions_pool_distinct": n_distinct,
        "kept": len(uids),
        "fasttext_us_per_caption": round(native["s"] / max(native["calls"], 1) * 1e6, 2),
        "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
        "cpu_total_s": round(time.process_time(), 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "loadavg": os.getloadavg(),
        "pandas_imported": "pandas" in sys.modules,
    }
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
