"""Commands of the baselines package: ``build-centroids`` (DataComp's image_based_clustering.py)
and ``datacomp-baseline`` (DataComp's ``baselines.py`` flags, argument checks and output)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from clipsift.errors import ParamError

BASELINES = ("no_filter", "basic_filter", "text_based", "clip_score", "laion2b", "image_based", "image_based_intersect_clip_score")


def register(sub) -> None:
    from clipsift.commands import add_common_subparser_args

    p = sub.add_parser(
        "build-centroids",
        help="faiss k-means over a pool's image embeddings: centroids for the image-based baselines",
        description="DataComp's image_based_clustering.py: caption filter (unless disabled), optional sampling, "
        "faiss k-means (niter 20, seed 0, max_points_per_centroid 1e7, flat L2), saved as torch.save(numpy array).",
    )
    p.add_argument("--pool", required=True, help="DataComp metadata directory")
    p.add_argument("--out", required=True, help="output centroid file (.pt)")
    p.add_argument("--num-clusters", type=int, default=100_000, help="K (default 100000)")
    p.add_argument("--embedding-key", default="l14_img", choices=("l14_img", "b32_img"))
    p.add_argument("--sample-ratio", type=float, default=-1.0, help="sample int(n*r) rows per shard with replacement (r>0)")
    p.add_argument("--disable-caption-filtering", action="store_true", help="cluster every row, not only captions passing the filter")
    p.add_argument("--seed", type=int, default=0, help="k-means seed and sampling seed (default 0)")
    p.add_argument("--niter", type=int, default=20, help="k-means iterations (default 20)")
    p.add_argument("--lid-model", default=None, help="fastText model for the caption filter (default: bundled lid.176.ftz)")
    add_common_subparser_args(p)
    p.set_defaults(func=cmd_build_centroids)

    p = sub.add_parser(
        "datacomp-baseline",
        help="DataComp's baselines.py interface (same flags and checks) on clipsift's implementation",
    )
    p.add_argument("--name", required=True, choices=BASELINES)
    p.add_argument("--metadata_dir", required=True)
    p.add_argument("--save_path", required=True)
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--fraction", type=float, default=None)
    p.add_argument("--arch", choices=("b32", "l14"), default=None)
    p.add_argument("--num_workers", type=int, default=None)
    p.add_argument("--batch_size", type=int, default=1024)
    p.add_argument("--image_based_scale", choices=("small", "medium", "large", "xlarge"), default=None)
    p.add_argument("--centroids", default=None, help="centroid file (DataComp downloads it; clipsift never does)")
    p.add_argument("--targets", default=None, help="folder with in1k_clip_vit_l14_{0..4}.pt")
    p.add_argument("--lid_model", default=None, help="lid.176.bin for exact parity (default: bundled lid.176.ftz)")
    p.add_argument("--wordnet_dir", default=None)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--bad-embeddings", choices=("error", "drop"), default="error",
                   help="rows with non-finite or zero embeddings: error (default) or drop and count them")
    p.set_defaults(func=cmd_datacomp_baseline)


def check_args(name, threshold=None, fraction=None, arch=None, image_based_scale=None) -> None:
    """DataComp's ``check_args`` (minus the CUDA requirement): raise ParamError where it raises."""
    if name not in BASELINES:
        raise ParamError(f"--name must be one of {', '.join(BASELINES)}")
    if name == "laion2b" and any(v is not None for v in (fraction, threshold, arch, image_based_scale)):
        raise ParamError("laion2b does not support clip_score or image_based flags")
    if "clip_score" in name:
        if fraction is None and threshold is None:
            raise ParamError("--fraction or --threshold must be specified for clip_score baselines")
        if fraction is not None and threshold is not None:
            raise ParamError("specify either --fraction or --threshold for clip_score baselines but not both")
        if arch is None:
            raise ParamError("specify architecture b32 or l14 (--arch) for clip_score baselines")
    for flag, value in (("fraction", fraction), ("threshold", threshold), ("arch", arch)):
        if value is not None and "clip_score" not in name:
            raise ParamError(f"--{flag} value only used for clip_score baselines")
    if image_based_scale is None and "image_based" in name:
        raise ParamError("--image_based_scale must be passed for image_based baselines")
    if image_based_scale is not None and "image_based" not in name:
        raise ParamError("--image_based_scale should only be passed for image_based baselines")


def baseline_params(args) -> dict:
    """Filter parameters for DataComp's flags."""
    params = {k: getattr(args, k) for k in ("threshold", "fraction", "arch") if getattr(args, k) is not None}
    if args.name in ("basic_filter", "text_based", "image_based", "image_based_intersect_clip_score") and args.lid_model:
        params["lid_model"] = args.lid_model
    if args.name == "text_based" and args.wordnet_dir:
        params["wordnet_dir"] = args.wordnet_dir
    if "image_based" in args.name:
        params.update(image_based_scale=args.image_based_scale, centroids=args.centroids, targets=args.targets, batch_size=args.batch_size)
    return params


def cmd_datacomp_baseline(args) -> int:
    from clipsift.devices import check_device
    from clipsift.executor import LocalExecutor
    from clipsift.filter import RunContext
    from clipsift.io import check_output_path
    from clipsift.pool import Pool
    from clipsift.registry import get_filter_class
    from clipsift.runner import run_to_subset
    from clipsift.workdir import run_workdir

    check_args(args.name, args.threshold, args.fraction, args.arch, args.image_based_scale)
    check_output_path(args.save_path, "--save_path")
    device = check_device(args.device)
    step = get_filter_class(args.name)(**baseline_params(args))
    pool = Pool(args.metadata_dir)
    with run_workdir() as workdir:
        ctx = RunContext(pool, LocalExecutor(args.num_workers, show_progress=not args.quiet), None, workdir, device,
                         bad_embeddings=args.bad_embeddings)
        path, manifest = run_to_subset(step, ctx, args.save_path, flag="--save_path")
    print(f"{path}: kept {manifest['output_count']} of {manifest['input_count']} in {manifest['wall_time_s']} s")
    return 0


class _EmbeddingReader:
    """Per shard: the embeddings DataComp's clustering script keeps (caption filter, sampling)."""

    def __init__(self, key, caption_filtering, sample_ratio, seed, lid_model):
        self.key, self.caption_filtering, self.sample_ratio, self.seed, self.lid_model = key, caption_filtering, sample_ratio, seed, lid_model

    def __call__(self, batch):
        from clipsift.baselines import assets
        from clipsift.baselines.common import and_mask, text_column
        from clipsift.baselines.image_based import caption_steps
        from clipsift.baselines.langid import FastTextLID

        emb = batch.embeddings[self.key]
        if self.caption_filtering:
            lid = FastTextLID(str(assets.resolve_lid_model(self.lid_model)[0]))
            emb = emb[and_mask(caption_steps(text_column(batch), lid), len(batch), Counter())]
        if self.sample_ratio > 0:
            rng = np.random.default_rng([self.seed, batch.shard.rank])
            emb = emb[rng.choice(len(emb), size=int(len(emb) * self.sample_ratio))] if len(emb) else emb
        return np.asarray(emb, dtype=np.float32)


def cmd_build_centroids(args) -> int:
    from clipsift.baselines import assets
    from clipsift.baselines.centroids import save_centroids, train_kmeans
    from clipsift.commands import _executor
    from clipsift.executor import map_shards
    from clipsift.io import check_output_path, write_json
    from clipsift.pool import Pool

    check_output_path(args.out)
    caption_filtering = not args.disable_caption_filtering
    if caption_filtering:
        assets.resolve_lid_model(args.lid_model)
    pool = Pool(args.pool)
    reader = _EmbeddingReader(args.embedding_key, caption_filtering, args.sample_ratio, args.seed, args.lid_model)
    cols = ("uid", "text") if caption_filtering else ("uid",)
    parts = [e for e in map_shards(pool, reader, columns=cols, keys=(args.embedding_key,), executor=_executor(args), desc="embeddings") if len(e)]
    if not parts:
        raise ParamError(f"{args.pool}: no embeddings left to cluster (empty pool or every caption filtered out)")
    emb = np.concatenate(parts)
    centroids = train_kmeans(emb, args.num_clusters, niter=args.niter, seed=args.seed)
    save_centroids(args.out, centroids)
    write_json(f"{args.out}.json", {
        "pool": pool.fingerprint(), "embedding_key": args.embedding_key, "num_points": int(len(emb)),
        "num_clusters": args.num_clusters, "niter": args.niter, "seed": args.seed,
        "caption_filtering": caption_filtering, "sample_ratio": args.sample_ratio,
    })
    print(f"{args.out}: {args.num_clusters} centroids from {len(emb)} embeddings")
    return 0
