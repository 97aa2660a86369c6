"""One GPU check: every CUDA path against the CPU result on the same small inputs, plus throughput.

Usage (on a machine with one GPU; about 3-6 minutes, the budget is 8):

    python benchmarks/gpu_check.py                      # CUDA against CPU
    python benchmarks/gpu_check.py --device cpu --quick # self-check of the script without a GPU

Inputs: a synthetic pool (``clipsift.synth.make_pool``, ``--rows`` rows with 64 px images), made
once in ``--work``. Each check runs the same call on the CPU and on ``--device`` and compares:

| check | path | criterion |
|---|---|---|
| image_based | centroid assignment (torch einsum, 1024-row blocks, TF32 off) | equal subset bytes (README: same GEMM shapes) |
| clipcov exact | fp64 per-class products (partition=kmeans) | equal subset bytes (specs/clipcov.md: fp64 parity) |
| clipcov fast | fp32/TF32 products | Jaccard of the subsets >= 0.98 |
| semdedup | pairwise cosine blocks | Jaccard >= 0.995 |
| dbp | SemDeDup blocks + density stage | Jaccard >= 0.99 |
| negclip | negCLIPLoss batch logits | max abs score difference <= 1e-4 (the subsets are reported) |
| normsim inf / 2 | NormSim products | max abs difference <= 1e-4 |
| embed | open_clip forward, fp16 autocast on CUDA | max abs feature difference <= 2e-2, score <= 1e-2 |
| train tiny / debug | a few AdamW steps of clipsift-tiny and the debug scale's ViT-B-32, fp32, same init and batches | relative loss difference <= 1e-3 per step |
| evaluation | zero-shot logits 100·f·W, argmax | max abs logit difference <= 5e-2 and top-1 agreement >= 0.99 |

Exact checks compare bytes; float checks give the stated tolerance. TF32 is switched off for the
comparisons (``torch.backends.*.allow_tf32 = False``), as the filters do where parity matters.
Throughput (rows/s or samples/s on each side) is printed for every check. The exit status is 0
only when every check passes. ``--budget`` seconds (default 450) stops starting new checks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

RESULTS: list[dict] = []


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = set(a.tolist()), set(b.tolist())
    return 1.0 if not sa and not sb else len(sa & sb) / len(sa | sb)


def record(check: str, ok: bool, detail: str, cpu_s: float | None = None, dev_s: float | None = None, units: int | None = None):
    row = {"check": check, "ok": bool(ok), "detail": detail}
    if cpu_s is not None:
        row["cpu s"] = round(cpu_s, 3)
    if dev_s is not None:
        row["device s"] = round(dev_s, 3)
    if units and cpu_s:
        row["cpu /s"] = round(units / cpu_s, 1)
    if units and dev_s:
        row["device /s"] = round(units / dev_s, 1)
    RESULTS.append(row)
    log(("PASS " if ok else "FAIL ") + json.dumps(row))


def timed(fn):
    t = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ------------------------------------------------------------------ inputs


def make_inputs(work: Path, rows: int) -> dict:
    from clipsift.synth import make_pool

    pool = work / f"pool-{rows}"
    if not (pool / "metadata").is_dir():
        make_pool(pool, rows, images=True, shard_rows=max(250, rows // 4), seed=0)
    meta = pool / "metadata"
    emb = np.concatenate([np.load(p)["l14_img"] for p in sorted(meta.glob("*.npz"))]).astype(np.float32)
    rng = np.random.default_rng(0)
    cent = work / "centroids.npy"
    np.save(cent, emb[rng.choice(len(emb), 64, replace=False)])
    targets = work / "targets.npy"
    np.save(targets, emb[rng.choice(len(emb), 200, replace=False)])
    return {"pool": meta, "shards": pool / "shards", "centroids": cent, "targets": targets, "rows": len(emb)}


# ------------------------------------------------------------------ filters


def run_filter(pool: Path, name: str, params: dict, device: str, work: Path):
    from clipsift.executor import LocalExecutor
    from clipsift.filter import RunContext
    from clipsift.pool import Pool
    from clipsift.registry import create_filter

    with tempfile.TemporaryDirectory(dir=work) as tmp:
        ctx = RunContext(Pool(str(pool)), LocalExecutor(show_progress=False), workdir=Path(tmp), device=device)
        sel = create_filter(name, params).select(ctx)
        return np.asarray(sel.uids), (None if sel.scores is None else np.asarray(sel.scores, dtype=np.float64))


FILTER_CHECKS = [
    # (label, filter, params(inputs), mode, tolerance)
    ("image_based", "image_based", lambda i: {"centroids": str(i["centroids"]), "targets": str(i["targets"])}, "bytes", None),
    ("clipcov exact fp64", "clipcov", lambda i: {"partition": "kmeans", "clusters": 8, "fraction": 0.3}, "bytes", None),
    ("clipcov fast", "clipcov", lambda i: {"partition": "kmeans", "clusters": 8, "fraction": 0.3, "fast": True}, "jaccard", 0.98),
    ("semdedup pairwise blocks", "semdedup", lambda i: {"target": 0.8, "k": 4, "niter": 10, "block": 512}, "jaccard", 0.995),
    ("dbp", "dbp", lambda i: {"fraction": 0.3, "k": 8, "niter": 10, "dedup_k": 4}, "jaccard", 0.99),
    ("negclip", "negclip", lambda i: {"fraction": 0.3, "batch_size": 512}, "scores", 1e-4),
    ("normsim inf", "normsim", lambda i: {"fraction": 0.3, "target": str(i["targets"]), "norm": "inf"}, "scores", 1e-4),
    ("normsim 2", "normsim", lambda i: {"fraction": 0.3, "target": str(i["targets"]), "norm": "2"}, "scores", 1e-4),
]


def check_filter(label, name, params, mode, tol, inputs, device, work):
    from clipsift.uids import uids_digest

    (cu, cs), t_cpu = timed(lambda: run_filter(inputs["pool"], name, params, "cpu", work))
    (du, ds), t_dev = timed(lambda: run_filter(inputs["pool"], name, params, device, work))
    same = uids_digest(cu) == uids_digest(du)
    if mode == "bytes":
        ok, detail = same, f"subset bytes {'equal' if same else 'DIFFER'} ({len(cu)} vs {len(du)} rows, Jaccard {jaccard(cu, du):.5f})"
    elif mode == "jaccard":
        j = jaccard(cu, du)
        ok, detail = j >= tol, f"Jaccard {j:.5f} (>= {tol}); bytes {'equal' if same else 'differ'}"
    else:
        if cs is None or ds is None or len(cs) != len(ds):
            ok, detail = False, "no comparable per-uid scores"
        else:
            # compare on the common uids (a near-tie at the cut may swap a row)
            common = np.intersect1d(cu, du)
            ci = np.searchsorted(cu, common)
            di = np.searchsorted(du, common)
            diff = float(np.max(np.abs(cs[ci] - ds[di]))) if len(common) else 0.0
            ok = diff <= tol
            detail = f"max |score diff| {diff:.2e} (<= {tol}); subset bytes {'equal' if same else 'differ'}, Jaccard {jaccard(cu, du):.5f}"
    record(label, ok, detail, t_cpu, t_dev, inputs["rows"])


# ------------------------------------------------------------------ embed


def tiny_weights(work: Path) -> Path:
    import open_clip
    import torch

    from clipsift.eval.train import register_model_configs

    register_model_configs()
    path = work / "tiny_random.pt"
    if not path.exists():
        torch.manual_seed(0)
        torch.save(open_clip.create_model("clipsift-tiny").state_dict(), path)
    return path


def check_embed(inputs, device, work):
    from clipsift.filters.scores.embed import embed_folder

    w = tiny_weights(work)
    outs, times = {}, {}
    for side, dev in (("cpu", "cpu"), ("device", device)):
        out = Path(tempfile.mkdtemp(dir=work, prefix=f"embed-{side}-"))
        s, t = timed(lambda out=out, dev=dev: embed_folder(inputs["shards"], out, arch="clipsift-tiny", pretrained=str(w), name="t", batch_size=256, device=dev))
        outs[side], times[side] = (out, s["samples"]), t
    import pyarrow.parquet as pq

    fd = sd = 0.0
    for p in sorted(outs["cpu"][0].glob("*.npz")):
        a, b = np.load(p), np.load(outs["device"][0] / p.name)
        fd = max(fd, float(np.max(np.abs(a["t_img"].astype(np.float32) - b["t_img"].astype(np.float32)))),
                 float(np.max(np.abs(a["t_txt"].astype(np.float32) - b["t_txt"].astype(np.float32)))))
        qa = pq.read_table(p.with_suffix(".parquet")).column("clip_t_similarity_score").to_numpy()
        qb = pq.read_table((outs["device"][0] / p.name).with_suffix(".parquet")).column("clip_t_similarity_score").to_numpy()
        sd = max(sd, float(np.max(np.abs(qa - qb))))
    ok = fd <= 2e-2 and sd <= 1e-2
    record("embed (clipsift-tiny)", ok, f"max |feature diff| {fd:.2e} (<= 2e-2), max |score diff| {sd:.2e} (<= 1e-2)",
           times["cpu"], times["device"], outs["cpu"][1])


# ------------------------------------------------------------------ training steps


def train_losses(arch: str, device: str, steps: int, batch: int, lr: float, seed: int = 0):
    import open_clip
    import torch

    from clipsift.eval.train import register_model_configs

    register_model_configs()
    torch.manual_seed(seed)
    model = open_clip.create_model(arch).to(device)
    model.train()
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    ctx_len = model.context_length
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    loss_fn = open_clip.ClipLoss()
    losses = []
    t = time.perf_counter()
    for _ in range(steps):
        images = torch.randn(batch, 3, size, size, generator=g).to(device)
        tokens = torch.randint(1, 49000, (batch, ctx_len), generator=g).to(device)
        out = model(images, tokens)
        if isinstance(out, dict):
            out = (out["image_features"], out["text_features"], out["logit_scale"])
        loss = loss_fn(out[0], out[1], out[2])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach().cpu()))
    sync()
    return np.array(losses), time.perf_counter() - t


def check_training(device, quick):
    from clipsift.eval.scales import get_scale_config

    for scale in ("tiny", "debug"):
        cfg = get_scale_config(scale)
        steps = 2 if quick else 3
        batch = (16 if quick else 64) if scale == "debug" else (32 if quick else 128)
        lc, tc = train_losses(cfg["model"], "cpu", steps, batch, cfg["learning_rate"])
        ld, td = train_losses(cfg["model"], device, steps, batch, cfg["learning_rate"])
        rel = float(np.max(np.abs(lc - ld) / np.maximum(np.abs(lc), 1e-12)))
        record(f"train {scale} ({cfg['model']}, {steps} steps x {batch})", rel <= 1e-3,
               f"losses cpu {np.round(lc, 5).tolist()} device {np.round(ld, 5).tolist()}; max rel diff {rel:.2e} (<= 1e-3)",
               tc, td, steps * batch)


# ------------------------------------------------------------------ evaluation


def check_evaluation(inputs, device, work):
    import open_clip
    import torch
    from PIL import Image

    from clipsift.eval.train import register_model_configs

    register_model_configs()
    w = tiny_weights(work)
    import io
    import tarfile

    imgs = []
    for tar in sorted(Path(inputs["shards"]).glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".jpg"):
                    imgs.append(Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB"))
                if len(imgs) >= 512:
                    break
        if len(imgs) >= 512:
            break
    classes = [f"a photo of a {c}" for c in ("cat", "dog", "car", "tree", "house", "bird", "boat", "cup", "shoe", "lamp")]
    res = {}
    for side, dev in (("cpu", "cpu"), ("device", device)):
        model, _, pre = open_clip.create_model_and_transforms("clipsift-tiny", pretrained=str(w), device=dev)
        model.eval()
        tok = open_clip.get_tokenizer("clipsift-tiny")
        t = time.perf_counter()
        with torch.no_grad():
            wt = torch.nn.functional.normalize(model.encode_text(tok(classes).to(dev)).float(), dim=-1)
            x = torch.stack([pre(i) for i in imgs]).to(dev)
            f = torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1)
            logits = (100.0 * f @ wt.T).cpu().numpy()
        sync()
        res[side] = (logits, time.perf_counter() - t)
    a, b = res["cpu"][0], res["device"][0]
    diff = float(np.max(np.abs(a - b)))
    agree = float(np.mean(a.argmax(1) == b.argmax(1)))
    record("evaluation (zero-shot logits)", diff <= 5e-2 and agree >= 0.99, f"max |logit diff| {diff:.2e} (<= 5e-2), top-1 agreement {agree:.4f}",
           res["cpu"][1], res["device"][1], len(imgs))


# ------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="device checked against the CPU (default cuda; cpu = self-check)")
    ap.add_argument("--rows", type=int, default=4000, help="synthetic pool rows (default 4000)")
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--quick", action="store_true", help="smaller training batches (for a CPU self-check)")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds after which no new check starts")
    ap.add_argument("--only", nargs="*", default=None, help="run only checks whose label contains one of these words")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()
    os.environ.setdefault("CLIPSIFT_PROGRESS", "0")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        log("no CUDA GPU visible: run with --device cpu for a self-check of the script")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    t0 = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="clipsift-gpucheck-") if args.work is None else None
    work = Path(args.work or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    info = {"device": args.device, "torch": torch.__version__}
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    log(f"gpu_check: {json.dumps(info)}")
    inputs = make_inputs(work, args.rows)
    log(f"inputs ready in {time.perf_counter() - t0:.1f} s ({inputs['rows']} rows)")
    checks = [(lab, (lambda lab=lab, n=n, p=p, m=m, tol=tol: check_filter(lab, n, p(inputs), m, tol, inputs, args.device, work)))
              for lab, n, p, m, tol in FILTER_CHECKS]
    checks += [
        ("embed", lambda: check_embed(inputs, args.device, work)),
        ("train", lambda: check_training(args.device, args.quick)),
        ("evaluation", lambda: check_evaluation(inputs, args.device, work)),
    ]
    for label, fn in checks:
        if args.only and not any(w in label for w in args.only):
            continue
        if time.perf_counter() - t0 > args.budget:
            record(label, False, f"not run: the {args.budget:.0f} s budget was spent")
            continue
        try:
            fn()
        except Exception as exc:  # one failing path must not hide the others
            record(label, False, f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
            traceback.print_exc(file=sys.stderr)
    total = time.perf_counter() - t0
    cols = ["check", "ok", "cpu s", "device s", "cpu /s", "device /s", "detail"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in RESULTS:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    print(f"\n{sum(r['ok'] for r in RESULTS)}/{len(RESULTS)} checks passed in {total:.0f} s on {json.dumps(info)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "seconds": total, "results": RESULTS}, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0 if RESULTS and all(r["ok"] for r in RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
