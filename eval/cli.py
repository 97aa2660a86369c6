"""CLI commands of the tracks: ``reshard``, ``train``, ``evaluate``, ``evalsets``, ``track``, ``demo``."""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    _register_reshard(sub)
    _register_train(sub)
    _register_evaluate(sub)
    _register_evalsets(sub)
    _register_track(sub)
    _register_demo(sub)


# ---- reshard -----------------------------------------------------------------------------------
def _register_reshard(sub) -> None:
    p = sub.add_parser("reshard", help="subset file + image shards -> training shards (DataComp's resharder)",
                       description="Write the samples of a subset file as webdataset training shards, as DataComp's resharder.py does.")
    p.add_argument("-i", "--input-dir", required=True, help="folder of img2dataset shards ({:08d}.tar + _stats.json)")
    p.add_argument("-o", "--output-dir", required=True, help="output folder, outside the input folder (must be absent or empty unless --overwrite)")
    p.add_argument("-s", "--subset-file", required=True, help="subset file (.npy of u8,u8 records, or raw 16-byte records)")
    p.add_argument("-n", "--num-shards", type=int, default=None, help="number of input shard ids (default: probed)")
    p.add_argument("--first-shard", type=int, default=0)
    p.add_argument("-j", "--num-workers", type=int, default=None, help="worker processes (default: CPU count, at most one per shard)")
    p.add_argument("--shard-size", type=int, default=10000, help="max samples per output shard (default 10000)")
    p.add_argument("--shard-format", default="{:08d}.tar", help="input shard name format")
    p.add_argument("--output-shard-format", default="{:08d}.tar")
    p.add_argument("--shard-stats-format", default="{:08d}_stats.json")
    p.add_argument("--output-shard-stats-format", default="{:08d}_stats.json")
    p.add_argument("--shard-table", default="sizes.json", help="JSON {shard name: size} in the input folder")
    p.add_argument("--write-shard-table", action="store_true", help="write the shard table into the INPUT folder if absent")
    p.add_argument("--shuffle-bufsize", type=int, default=0, help=">0: per-worker shuffle buffer")
    p.add_argument("--dry-run", action="store_true", help="count only, write nothing")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous clipsift reshard output (only its own files; the new one is swapped in when complete)")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="skip samples without .json and copy those without .txt, as DataComp's resharder does (default: stop with an error)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_reshard)


def cmd_reshard(args) -> int:
    from dataclasses import asdict

    from clipsift.eval.reshard import ReshardArgs, reshard

    ra = ReshardArgs(
        input_dir=args.input_dir, output_dir=args.output_dir, subset_file=args.subset_file, num_shards=args.num_shards,
        first_shard=args.first_shard, num_workers=args.num_workers, shard_size=args.shard_size, shard_format=args.shard_format,
        output_shard_format=args.output_shard_format, shard_stats_format=args.shard_stats_format,
        output_shard_stats_format=args.output_shard_stats_format, shard_table=args.shard_table,
        write_shard_table=args.write_shard_table, shuffle_bufsize=args.shuffle_bufsize, dry_run=args.dry_run,
        overwrite=args.overwrite, verbose=args.verbose, quiet=int(args.quiet), allow_incomplete=args.allow_incomplete,
    )
    res = reshard(ra)
    if args.json:
        json.dump(asdict(res), sys.stdout, indent=2)
        print()
    else:
        print(f"{res.output_dir}: {res.output_count} samples in {res.output_shard_count} shards "
              f"({res.processed_count} read, {res.missing_count} subset uids not found) in {res.wall_time_s} s")
    return 0


# ---- train -------------------------------------------------------------------------------------
def _add_train_args(p, required=True) -> None:
    from clipsift.eval.scales import available_scales

    p.add_argument("--scale", required=required, choices=available_scales(), help="training scale (tiny runs on CPU)")
    p.add_argument("--workers", type=int, default=None, help="data workers (default 4; tiny 1)")
    p.add_argument("--precision", default=None, choices=["amp", "amp_bf16", "amp_bfloat16", "bf16", "fp16", "fp32"],
                   help="default amp on CUDA, fp32 on CPU")
    p.add_argument("--num-checkpoints", type=int, default=None, help="epochs = checkpoints (default 5; tiny 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--accum-freq", type=int, default=1)
    p.add_argument("--log-every-n-steps", type=int, default=None)
    p.add_argument("--resume", default="latest")
    p.add_argument("--save-frequency", type=int, default=0)
    p.add_argument("--grad-clip-norm", type=float, default=None)
    p.add_argument("--report-to-wandb", action="store_true")
    p.add_argument("--wandb-project-name", default="datanet")
    p.add_argument("--imagenet-val", default=None)
    p.add_argument("--train-num-samples", type=int, default=None, help="override the scale's samples seen (tiny track experiments)")
    p.add_argument("--gpus", type=int, default=None, help="GPUs on this node (default: all visible; >1 launches torchrun)")


def _register_train(sub) -> None:
    p = sub.add_parser("train", help="train CLIP on resharded data at a DataComp scale (open_clip's trainer)",
                       description="DataComp's train.py: the same open_clip arguments per scale; torchrun on several GPUs, in-process otherwise.")
    _add_train_args(p)
    p.add_argument("--data-dir", required=True, help="resharded folder(s), '::'-separated")
    p.add_argument("--data-weights", default=None, help="'::'-separated sampling weights, one per data dir")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--exp-name", default=None, help="default {scale}_scale")
    p.add_argument("--dry-run", action="store_true", help="print the exact command and exit")
    p.set_defaults(func=cmd_train)


def train_config(args, data_dir, output_dir, exp_name=None):
    from clipsift.eval.train import TrainConfig

    return TrainConfig(
        scale=args.scale, data_dir=data_dir, output_dir=output_dir, exp_name=exp_name,
        data_weights=getattr(args, "data_weights", None), workers=args.workers, precision=args.precision,
        num_checkpoints=args.num_checkpoints, seed=args.seed, accum_freq=args.accum_freq,
        log_every_n_steps=args.log_every_n_steps, resume=args.resume, save_frequency=args.save_frequency,
        report_to_wandb=args.report_to_wandb, wandb_project_name=args.wandb_project_name,
        imagenet_val=args.imagenet_val, grad_clip_norm=args.grad_clip_norm, train_num_samples=args.train_num_samples,
    )


def cmd_train(args) -> int:
    from clipsift.eval.train import dry_run_text, run_training

    cfg = train_config(args, args.data_dir, args.output_dir, args.exp_name)
    if args.dry_run:
        print(dry_run_text(cfg, args.gpus))
        return 0
    res = run_training(cfg, args.gpus)
    print(f"{res['exp_dir']}: trained ({res['samples_seen']} samples seen, world size {res['world_size']})")
    return 0


# ---- evaluate ----------------------------------------------------------------------------------
def _register_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="zero-shot evaluation writing DataComp's eval_results.jsonl",
                       description="DataComp's evaluate.py (no submission): tasks in tasklist order, resumable.")
    p.add_argument("--train-output-dir", required=True, help="training folder with info.pkl")
    p.add_argument("--output-dir", default=None, help="default: the training folder")
    p.add_argument("--data-dir", default=None, help="local evaluation sets (clipsift evalsets download / tiny)")
    p.add_argument("--suite", default="datacomp38", choices=["datacomp38", "tiny"])
    p.add_argument("--task", action="append", default=None, help="only this task key (repeatable)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=4, help="data loader workers per task (default 4)")
    p.add_argument("--use-model", default=None, help="'ARCH CHECKPOINT': evaluate a given model (debug)")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from clipsift.eval.evaluate import average_main_metric, evaluate

    recs = evaluate(args.train_output_dir, args.output_dir, args.data_dir, args.suite, args.batch_size, args.use_model, args.num_workers, args.task)
    for r in recs:
        m = r["metrics"]["main_metric"]
        print(f"{r['dataset']}: {'null' if m is None else f'{m:.4f}'}")
    avg = average_main_metric(recs)
    print(f"Average ({len(recs)} tasks): {'null' if avg is None else f'{avg:.4f}'}")
    return 0


# ---- evalsets ----------------------------------------------------------------------------------
def _register_evalsets(sub) -> None:
    p = sub.add_parser("evalsets", help="fetch DataComp's evaluation sets, write stand-ins of them, or generate the tiny suite")
    es = p.add_subparsers(dest="evalsets_command", metavar="SUBCOMMAND", required=True)
    q = es.add_parser("download", help="download DataComp's 38-task evaluation sets (needs network)")
    q.add_argument("--data-dir", required=True)
    q.add_argument("--task", action="append", default=None, help="only this task key (repeatable)")
    q.set_defaults(func=cmd_evalsets_download)
    q = es.add_parser("tiny", help="render the tiny suite from a synthetic pool's world")
    q.add_argument("--pool", required=True, help="synthetic pool folder (with world.json)")
    q.add_argument("--data-dir", required=True, help="output folder (an evaluation --data-dir)")
    q.add_argument("--seed", type=int, default=1234)
    q.add_argument("--overwrite", action="store_true")
    q.set_defaults(func=cmd_evalsets_tiny)
    q = es.add_parser("standin", help="write small generated stand-ins of all 40 DataComp sets (offline tests, parity checks)",
                      description="Stand-in evaluation sets in DataComp's exact layouts (webdataset folders with the WILDS/fairness "
                                  "metadata, Hugging Face caches for Flickr, MSCOCO and WinoGAViL), rendered from the synthetic world.")
    q.add_argument("--data-dir", required=True, help="output folder (an evaluation --data-dir)")
    q.add_argument("--seed", type=int, default=0, help="world and sampling seed")
    q.add_argument("--pool", default=None, help="render from this synthetic pool's world (world.json), so a model trained on it scores above chance")
    q.add_argument("--n", type=int, default=32, help="images (retrieval: images, WinoGAViL: examples) per task")
    q.add_argument("--max-classes", type=int, default=20, help="cap on classes per task (real count when smaller)")
    q.add_argument("--task", action="append", default=None, help="only this task key (repeatable)")
    q.add_argument("--overwrite", action="store_true")
    q.set_defaults(func=cmd_evalsets_standin)
    q = es.add_parser("check", help="list the tasks whose data is missing from a data dir")
    q.add_argument("--data-dir", required=True)
    q.add_argument("--suite", default="datacomp38", choices=["datacomp38", "tiny"])
    q.set_defaults(func=cmd_evalsets_check)


def cmd_evalsets_download(args) -> int:
    from clipsift.eval.evalsets import download

    done = download(args.data_dir, args.task)
    print(f"{args.data_dir}: {len(done)} evaluation set(s) present")
    return 0


def cmd_evalsets_tiny(args) -> int:
    from clipsift.eval.tiny_suite import make_tiny_suite

    out = make_tiny_suite(args.data_dir, args.pool, seed=args.seed, overwrite=args.overwrite)
    print(f"{out}: tiny suite ready")
    return 0


def cmd_evalsets_standin(args) -> int:
    from clipsift.eval.standin import make_standin
    from clipsift.eval.tiny_suite import _world_of

    world = _world_of(args.pool) if args.pool else None
    out = make_standin(args.data_dir, seed=args.seed, n=args.n, max_classes=args.max_classes, world=world, tasks=args.task, overwrite=args.overwrite)
    print(f"{out}: stand-in evaluation sets ready")
    return 0


def cmd_evalsets_check(args) -> int:
    from clipsift.eval.evalsets import missing_tasks

    missing = missing_tasks(args.data_dir, args.suite)
    for key, why in missing:
        print(f"missing  {key}: {why}")
    print(f"{args.data_dir}: {len(missing)} task(s) missing")
    return 1 if missing else 0


# ---- track -------------------------------------------------------------------------------------
def _register_track(sub) -> None:
    p = sub.add_parser("track", help="subset -> result folder: reshard, train, evaluate (resumable)")
    ts = p.add_subparsers(dest="track_command", metavar="SUBCOMMAND", required=True)
    q = ts.add_parser("run", help="reshard -> train -> evaluate into one run folder",
                      description="Run the whole loop; rerunning resumes after the last completed stage.")
    q.add_argument("--subset", required=True, help="subset file (with its FILE.json manifest, if any)")
    q.add_argument("--shards", required=True, help="image shards of the pool (img2dataset layout)")
    q.add_argument("--out", required=True, help="run folder")
    q.add_argument("--eval-data-dir", default=None, help="evaluation sets (default for tiny: generated under the run's parent)")
    q.add_argument("--pool", default=None, help="synthetic pool folder (tiny suite generation)")
    q.add_argument("--suite", default=None, choices=["datacomp38", "tiny"], help="default: tiny for the tiny scale, else datacomp38")
    q.add_argument("--method", default=None, help="method name recorded in run.json (default: the manifest's filter)")
    q.add_argument("--reshard-workers", type=int, default=None)
    q.add_argument("--eval-workers", type=int, default=None, help="data loader workers per task (default 4; 0 for tiny)")
    q.add_argument("--batch-size", type=int, default=64, help="evaluation batch size")
    _add_train_args(q)
    q.set_defaults(func=cmd_track_run)


def cmd_track_run(args) -> int:
    from clipsift.eval.track import TrackSpec, run_track

    spec = TrackSpec(
        subset=args.subset, shards=args.shards, out=args.out, train=train_config(args, "", ""),
        suite=args.suite, eval_data_dir=args.eval_data_dir, pool=args.pool, method=args.method,
        reshard_workers=args.reshard_workers, eval_workers=args.eval_workers, batch_size=args.batch_size, gpus=args.gpus,
    )
    run = run_track(spec)
    print(f"{args.out}: {run['method']} {run['scale']} seed {run['seed']}: average {run['average']}")
    return 0


# ---- demo --------------------------------------------------------------------------------------
def _register_demo(sub) -> None:
    p = sub.add_parser("demo", help="synthetic pool -> several filters -> tiny track -> leaderboard (CPU, ~15 min)")
    p.add_argument("--out", required=True, help="demo folder (resumable)")
    p.add_argument("--rows", type=int, default=None, help="pool size (default from the demo plan)")
    p.add_argument("--fraction", type=float, default=None, help="budget: share of the pool kept by each filter")
    p.add_argument("--filters", default=None, help="comma-separated filter names (default: clip_score,clipcov,dbp)")
    p.add_argument("--seed", type=int, default=0, help="the pool's seed")
    p.add_argument("--seeds", default="0,1", help="training seeds per method, comma-separated (default 0,1: mean ± std and ties)")
    p.add_argument("--train-num-samples", type=int, default=None, help="samples seen per run (default 32768, the tiny scale's length)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from clipsift.eval.demo import run_demo

    summary = run_demo(args.out, rows=args.rows, fraction=args.fraction, filters=args.filters.split(",") if args.filters else None,
                       seed=args.seed, train_num_samples=args.train_num_samples,
                       seeds=[int(x) for x in args.seeds.split(",") if x.strip()])
    print(summary["table"])
    t = summary["timings"]
    print(f"\n{summary['out']}: {t['total_s'] / 60:.1f} min ({t['cpu_s'] / 60:.1f} CPU-min); log {summary['log']}")
    if summary.get("page"):
        print(f"leaderboard page: {summary['page']}")
    return 0
