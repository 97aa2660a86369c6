"""`clipsift embed` throughput on the CPU (or --device cuda).

Shards: a synthetic pool with images (``_harness.synthetic_pool(rows, images=True)``, 64 px JPEGs
as img2dataset lays them out). Models: ``clipsift-tiny`` (the tiny track's model) and, unless
``--no-b32``, open_clip's ViT-B-32 (224 px), both with random weights saved to a file. Each run is
a fresh interpreter writing a new metadata folder; "decode floor" streams the tars, decodes and
preprocesses the images without the model. samples/s counts embedded samples.
Usage: python benchmarks/bench_embed.py [--rows 2000] [--b32-rows 300] [--no-b32] [--batch-size 256] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys

from _harness import CACHE, isolated, synthetic_pool, table

WEIGHTS = """
import open_clip, torch
from clipsift.eval.train import register_model_configs
register_model_configs()
torch.manual_seed(0)
torch.save(open_clip.create_model({arch!r}).state_dict(), {path!r})
result = {{}}
"""

FLOOR = """
import time, io, glob, torch, open_clip
from PIL import Image
from clipsift.eval.train import register_model_configs
from clipsift.filters.scores.embed import iter_samples
register_model_configs()
_, _, pre = open_clip.create_model_and_transforms({arch!r})
t = time.perf_counter()
n = 0
batch = []
for tar in sorted(glob.glob({shards!r} + "/*.tar"))[: {max_shards}]:
    for key, m in iter_samples(__import__("pathlib").Path(tar)):
        if "jpg" in m:
            with Image.open(io.BytesIO(m["jpg"])) as im:
                batch.append(pre(im.convert("RGB")))
            n += 1
            if len(batch) == {batch}:
                torch.stack(batch); batch = []
result = {{"seconds": time.perf_counter() - t, "samples": n}}
"""

EMBED = """
import time, tempfile, os, shutil, glob
from clipsift.filters.scores.embed import embed_folder
src = {shards!r}
tmp = tempfile.mkdtemp()
os.makedirs(tmp + "/shards")
for tar in sorted(glob.glob(src + "/*.tar"))[: {max_shards}]:
    os.symlink(tar, tmp + "/shards/" + os.path.basename(tar))
t = time.perf_counter()
s = embed_folder(tmp + "/shards", tmp + "/out", arch={arch!r}, pretrained={weights!r}, name="x", batch_size={batch}, device={device!r})
result = {{"seconds": time.perf_counter() - t, "samples": s["samples"], "device": s.get("device")}}
shutil.rmtree(tmp)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=2000, help="synthetic pool rows (shards of 10k rows; failed downloads excluded)")
    ap.add_argument("--b32-rows", type=int, default=300, help="rows of the (separate) pool embedded with ViT-B-32")
    ap.add_argument("--no-b32", action="store_true")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    rows = []
    models = [("clipsift-tiny", args.rows)] + ([] if args.no_b32 else [("ViT-B-32", args.b32_rows)])
    for arch, pool_rows in models:
        shards, max_shards = str(synthetic_pool(pool_rows, images=True).parent / "shards"), 10**6
        path = str(CACHE / f"random-{arch}.pt")
        isolated(WEIGHTS.format(arch=arch, path=path))
        floor = isolated(FLOOR.format(arch=arch, shards=shards, max_shards=max_shards, batch=args.batch_size))
        run = isolated(EMBED.format(shards=shards, arch=arch, weights=path, batch=args.batch_size, device=args.device, max_shards=max_shards))
        rows.append({"model": arch, "job": "decode floor (tar, JPEG, preprocess)", "samples": floor["samples"], "s": f"{floor['seconds']:.2f}",
                     "samples/s": f"{floor['samples'] / floor['seconds']:.0f}", "peak MB": floor["peak_rss_mb"]})
        rows.append({"model": arch, "job": f"embed ({run['device']}, batch {args.batch_size})", "samples": run["samples"], "s": f"{run['seconds']:.2f}",
                     "samples/s": f"{run['samples'] / run['seconds']:.0f}", "peak MB": run["peak_rss_mb"]})
        print(f"{arch}: floor {rows[-2]['samples/s']} samples/s, embed {rows[-1]['samples/s']} samples/s", file=sys.stderr, flush=True)
    print(table(rows, ["model", "job", "samples", "s", "samples/s", "peak MB"]))


if __name__ == "__main__":
    main()
