"""clipsift evaluate vs DataComp's own evaluate.py on the same stand-in sets and checkpoint.

Runs both evaluations on the 40 stand-in sets (``clipsift evalsets standin``) and prints, per task,
the main metric of each side and the largest difference over every metric both report; exits 1
when a main metric differs by more than --tol (FMoW's documented "Other" region difference is
checked against DataComp's figure, kept as ``acc_worst_region_datacomp``).

The reference runs in its own environment OUTSIDE this repository (never committed), e.g.::

    python3.11 -m venv /tmp/dcref/venv
    /tmp/dcref/venv/bin/pip install --no-deps open-clip-torch==2.16.1 clip-benchmark==1.4.0 \\
        webdataset==0.2.31 wilds==2.0.0 datasets==2.8.0 timm==0.6.13
    /tmp/dcref/venv/bin/pip install numpy==1.23.4 scikit-learn==1.1.3 scipy==1.9.3 pandas==1.5.1 \\
        pyarrow==11.0.0 huggingface-hub==0.14.1 pillow==9.3.0 ftfy regex tqdm pyyaml requests \\
        dill==0.3.6 multiprocess==0.70.14 xxhash aiohttp responses==0.18.0 fsspec==2022.11.0 \\
        ogb==1.3.5 outdated pytz cloudpathlib==0.13.0 braceexpand
    # torch: DataComp pins 1.13.0 (no Python 3.11 wheel); link this checkout's torch/torchvision
    # (and their nvidia/triton/cuda packages) into the venv's site-packages instead
    git clone https://github.com/mlfoundations/datacomp /tmp/dcref/datacomp   # @ 4a8df19

    python benchmarks/compare_datacomp_eval.py --ref-python /tmp/dcref/venv/bin/python \\
        --datacomp-dir /tmp/dcref/datacomp --work /tmp/dcref/run --seed 0 --n 16

DataComp's evaluate.py runs unmodified (``--use_model``, no ``--submit``, so nothing is sent):
the driver only registers clipsift's model configs with open_clip before running it. Its Hugging
Face sets are read by datasets 2.8.0, which opens an offline cache only through a cached loading
script: the driver writes one per set (under ``<work>/hf_modules``) that yields the stand-in's rows
unchanged from the arrow file clipsift wrote, and prepares it into ``<work>/refdata/hf_cache``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

HF_SETS = {
    "flickr_1k_test_image_text_retrieval": "retrieval",
    "mscoco_2014_5k_test_image_text_retrieval": "retrieval",
    "winogavil": "winogavil",
}

# datasets 2.8.0 loading script: the stand-in's rows, read from clipsift's arrow file
SCRIPT = '''
import datasets
import pyarrow as pa

ARROW = {arrow!r}
KIND = {kind!r}


class Standin(datasets.GeneratorBasedBuilder):
    VERSION = datasets.Version("0.0.0")

    def _info(self):
        s = datasets.Sequence(datasets.Value("string"))
        if KIND == "winogavil":
            f = {{"ID": datasets.Value("int64"), "cue": datasets.Value("string"), "candidates": s, "associations": s,
                 "candidate_images": datasets.Sequence(datasets.Image()), "num_associations": datasets.Value("int64"),
                 "num_candidates": datasets.Value("int64"), "score_fool_the_ai": datasets.Value("float64"),
                 "solvers_jaccard_mean": datasets.Value("float64"), "solvers_jaccard_std": datasets.Value("float64")}}
        else:
            f = {{"image": datasets.Image(), "filename": datasets.Value("string"), "caption": s, "sentids": s,
                 "img_id": datasets.Value("string")}}
        return datasets.DatasetInfo(features=datasets.Features(f))

    def _split_generators(self, dl_manager):
        return [datasets.SplitGenerator(name=datasets.Split.TEST)]

    def _generate_examples(self):
        with pa.memory_map(ARROW) as src:
            table = pa.ipc.open_stream(src).read_all()
        for i, row in enumerate(table.to_pylist()):
            yield i, row
'''

PREPARE = '''
import os, sys, json
names = json.loads(sys.argv[1]); cache = sys.argv[2]
import datasets
for name in names:
    ds = datasets.load_dataset("nlphuji/" + name, split="test", cache_dir=cache)
    print(name, len(ds), ds.column_names, flush=True)
'''

DRIVER = '''
import runpy, sys, warnings
configs, datacomp = sys.argv[1], sys.argv[2]
import open_clip
open_clip.add_model_config(configs)
sys.path.insert(0, datacomp)
sys.argv = [datacomp + "/evaluate.py"] + sys.argv[3:]
runpy.run_path(datacomp + "/evaluate.py", run_name="__main__")
'''


def sh(cmd, env=None, cwd=None, log=None) -> float:
    t0 = time.perf_counter()
    with open(log, "w") if log else open(os.devnull, "w") as fh:
        r = subprocess.run(cmd, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)
    if r.returncode:
        tail = Path(log).read_text()[-3000:] if log else ""
        sys.exit(f"command failed ({r.returncode}): {' '.join(map(str, cmd))}\n{tail}")
    return time.perf_counter() - t0


def model_configs(work: Path) -> Path:
    """clipsift-tiny with open_clip's default 77-token context, registered on both sides.

    open_clip 2.16.1 (DataComp's pin) tokenizes every non-HF model to 77 tokens whatever its
    config says, so a model with another context length cannot run in DataComp's evaluate.py."""
    import open_clip

    from clipsift.eval.train import register_model_configs

    register_model_configs()
    src = Path(__file__).resolve().parents[1] / "eval" / "model_configs" / "clipsift-tiny.json"
    cfg = json.loads(src.read_text())
    cfg["text_cfg"]["context_length"] = 77
    d = work / "model_configs"
    d.mkdir(parents=True, exist_ok=True)
    (d / "clipsift-tiny-ctx77.json").write_text(json.dumps(cfg, indent=1))
    open_clip.add_model_config(str(d))
    return d


def make_checkpoint(path: Path, seed: int, arch: str) -> None:
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.create_model(arch)
    torch.save({"epoch": 1, "name": "standin", "state_dict": model.state_dict()}, path)


def to_ctx77(src: Path, dst: Path) -> None:
    """A clipsift-tiny checkpoint (24-token context) as clipsift-tiny-ctx77: positional embedding
    zero-padded to 77 rows. Text features are read at the end token under a causal mask, so every
    text of at most 24 tokens encodes exactly as before."""
    import torch

    ck = torch.load(src, map_location="cpu", weights_only=True)
    sd = {k.removeprefix("module."): v for k, v in ck.get("state_dict", ck).items()}
    pe = sd["positional_embedding"]
    if pe.shape[0] < 77:
        sd["positional_embedding"] = torch.cat([pe, pe.new_zeros(77 - pe.shape[0], pe.shape[1])])
    torch.save({"epoch": ck.get("epoch", 1), "name": "ctx77", "state_dict": sd}, dst)


def reference_data(work: Path, data: Path, ref_python: str, tag: str) -> tuple[Path, dict]:
    """<work>/refdata-<tag>: links to the stand-in's webdataset folders + a datasets-2.8.0 cache of
    its HF sets (made afresh: a stale link or cache would compare different data)."""
    import shutil

    from clipsift.eval.standin import hf_cache_dir

    ref, modules = work / f"refdata-{tag}", work / f"hf_modules-{tag}"
    for d in (ref, modules):
        if d.exists():
            shutil.rmtree(d)
    ref.mkdir(parents=True)
    for p in data.iterdir():
        if p.name.startswith("wds_"):
            (ref / p.name).symlink_to(p.resolve())
    for name, kind in HF_SETS.items():
        arrow = hf_cache_dir(data / "hf_cache", name) / f"{name}-test.arrow"
        d = modules / "datasets_modules" / "datasets" / f"nlphuji--{name}" / ("0" * 64)
        d.mkdir(parents=True, exist_ok=True)
        (d / "__init__.py").touch()
        (d.parent / "__init__.py").touch()
        (d / f"{name}.py").write_text(textwrap.dedent(SCRIPT.format(arrow=str(arrow.resolve()), kind=kind)))
    env = {**os.environ, "HF_MODULES_CACHE": str(modules), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONNOUSERSITE": "1", "TQDM_DISABLE": "1"}
    env.pop("PYTHONPATH", None)
    sh([ref_python, "-c", PREPARE, json.dumps(list(HF_SETS)), str(ref / "hf_cache")], env=env, log=work / f"prepare_hf-{tag}.log")
    return ref, env


def read_results(path: Path) -> dict:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out[rec["key"]] = rec
    return out


def missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def compare(ours: dict, ref: dict, tasks, tol: float) -> tuple[list[dict], list[str]]:
    rows, problems = [], []
    for t in tasks:
        a, b = ours.get(t.key), ref.get(t.key)
        if a is None or b is None:
            problems.append(f"{t.key}: result missing on {'clipsift' if a is None else 'DataComp'} side")
            continue
        ma, mb = a["metrics"], b["metrics"]
        main_a, main_b = ma.get("main_metric"), mb.get("main_metric")
        if t.key == "wilds/fmow":  # documented: DataComp's worst region includes "Other"
            main_a = ma.get("acc_worst_region_datacomp")
        worst, worst_key = 0.0, ""
        for k in sorted(set(ma) & set(mb)):
            va, vb = ma[k], mb[k]
            if t.key == "wilds/fmow" and k in ("acc_worst_region", "main_metric"):
                continue
            if missing(va) and missing(vb):
                continue
            if missing(va) != missing(vb) or not isinstance(va, (int, float)) or not isinstance(vb, (int, float)):
                if va != vb:
                    problems.append(f"{t.key}: {k} clipsift {va!r} vs DataComp {vb!r}")
                continue
            if abs(va - vb) > worst:
                worst, worst_key = abs(va - vb), k
        only_a = sorted(set(ma) - set(mb) - {"acc_worst_region_datacomp"})
        only_b = sorted(set(mb) - set(ma))
        if only_a or only_b:
            problems.append(f"{t.key}: keys only in clipsift {only_a}, only in DataComp {only_b}")
        if missing(main_a) != missing(main_b):
            problems.append(f"{t.key}: main metric clipsift {main_a!r} vs DataComp {main_b!r}")
            d = float("nan")
        else:
            d = 0.0 if missing(main_a) else abs(main_a - main_b)
        if d > tol or worst > tol:
            problems.append(f"{t.key}: |diff| main {d:.3g}, largest over all metrics {worst:.3g} ({worst_key})")
        rows.append({"task": t.name, "metric": t.main_metric, "clipsift": main_a, "datacomp": main_b, "diff": d,
                     "max_diff_all": worst, "n_metrics": len(set(ma) & set(mb)),
                     "clipsift_main": ma.get("main_metric")})
    return rows, problems


def fmt(v) -> str:
    return "null" if missing(v) else f"{v:.6f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref-python", default="/tmp/dcref/venv/bin/python")
    ap.add_argument("--datacomp-dir", default="/tmp/dcref/datacomp", help="checkout of mlfoundations/datacomp")
    ap.add_argument("--work", default="/tmp/dcref/run", help="scratch folder (outside the repository)")
    ap.add_argument("--data-dir", default=None, help="stand-in sets (default: <work>/standin-<seed>, generated)")
    ap.add_argument("--checkpoint", default=None, help="a trained clipsift-tiny checkpoint, converted to the 77-token arch (default: random init, seed --seed)")
    ap.add_argument("--pool", default=None, help="render the stand-ins from this synthetic pool's world (the checkpoint's training pool)")
    ap.add_argument("--arch", default="clipsift-tiny-ctx77", help="open_clip model name (default: clipsift-tiny with a 77-token context)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=16, help="images per stand-in task")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--json", default=None, help="also write the table as JSON here")
    args = ap.parse_args()

    from clipsift.eval.evaluate import evaluate
    from clipsift.eval.standin import make_standin
    from clipsift.eval.tasks import load_tasks

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    world = None
    if args.pool:
        from clipsift.eval.tiny_suite import _world_of

        world = _world_of(args.pool)
    tag = f"{args.seed}" + ("-pool" if args.pool else "")
    data = Path(args.data_dir) if args.data_dir else work / f"standin-{tag}"
    make_standin(data, seed=args.seed, n=args.n, world=world, overwrite=not args.data_dir)
    configs = model_configs(work)
    ckpt = work / f"tiny-{tag}.pt"
    if args.checkpoint:
        to_ctx77(Path(args.checkpoint), ckpt)
    else:
        make_checkpoint(ckpt, args.seed, args.arch)
    ours_dir, ref_out = work / f"clipsift-{tag}", work / f"datacomp-{tag}"
    for d in (ours_dir, ref_out):
        if d.exists():
            import shutil

            shutil.rmtree(d)

    t0 = time.perf_counter()
    evaluate(ours_dir, ours_dir, str(data), "datacomp38", batch_size=args.batch_size, use_model=f"{args.arch} {ckpt}", num_workers=0)
    t_ours = time.perf_counter() - t0

    refdata, env = reference_data(work, data, args.ref_python, tag)
    t_ref = sh([args.ref_python, "-W", "ignore", "-c", DRIVER, str(configs), args.datacomp_dir,
                "--train_output_dir", str(ref_out), "--data_dir", str(refdata), "--batch_size", str(args.batch_size),
                "--use_model", f"{args.arch} {ckpt}"], env=env, cwd=args.datacomp_dir, log=work / f"datacomp-{tag}.log")

    tasks = load_tasks("datacomp38")
    rows, problems = compare(read_results(ours_dir / "eval_results.jsonl"), read_results(ref_out / "eval_results.jsonl"), tasks, args.tol)
    print(f"stand-ins {data} (seed {args.seed}, n {args.n}), checkpoint {ckpt}")
    print(f"clipsift evaluate {t_ours:.1f} s, DataComp evaluate.py {t_ref:.1f} s (40 tasks, CPU)")
    print("| task | main metric | clipsift | DataComp | abs diff | max abs diff over common metrics (count) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        note = f" (clipsift main, Other excluded: {fmt(r['clipsift_main'])})" if r["task"] == "FMoW" else ""
        print(f"| {r['task']} | {r['metric']} | {fmt(r['clipsift'])}{note} | {fmt(r['datacomp'])} | {r['diff']:.1e} | {r['max_diff_all']:.1e} ({r['n_metrics']}) |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if problems:
        print("\nDIFFERENCES:")
        for p in problems:
            print(" ", p)
        return 1
    print(f"\nall {len(rows)} tasks: every main metric and every common metric within {args.tol:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
