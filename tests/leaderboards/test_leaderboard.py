"""Leaderboards: DataComp-exact aggregation, published data, results store, outputs, submit-pack."""

from __future__ import annotations

import csv
import io
import json
import math
import pickle
import random
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path, PosixPath

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipsift.errors import ClipsiftError
from clipsift.leaderboards import compare as cmp_mod
from clipsift.leaderboards import tables
from clipsift.leaderboards.aggregate import aggregate_file, parse_eval_results
from clipsift.leaderboards.build import write_comparison, write_leaderboards
from clipsift.leaderboards.published import (
    PUBLISHED_SCALES,
    format_baselines_csv,
    format_leaderboard_tsv,
    parse_baselines_csv,
    parse_leaderboard_tsv,
    published,
    published_baselines,
)
from clipsift.leaderboards.store import ResultsStore, load_run, read_info_pkl
from clipsift.leaderboards.submit import SubmitInfo, write_submit_pack
from clipsift.leaderboards.tasks import datacomp_tasks, detect_suite, tiny_tasks

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference"  # beside the checkout
NULL_TASKS = ("fairness/fairface", "fairness/utkface")

# ----------------------------------------------------------------------------- helpers


def write_results(path: Path, values: dict, drop=(), order=None, extra_lines=()) -> Path:
    """eval_results.jsonl in evaluate.py's format; ``values`` maps task key -> main metric."""
    tasks = datacomp_tasks().tasks
    keys = order or [t.key for t in tasks]
    by_key = {t.key: t for t in tasks}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for k in keys:
            if k in drop:
                continue
            v = values.get(k)
            metrics = {"acc1": v, "acc5": None, "main_metric": v}
            fh.write(json.dumps({"key": k, "dataset": by_key[k].name, "metrics": metrics}) + "\n")
        for line in extra_lines:
            fh.write(line + "\n")
    return path


def designed_values() -> dict:
    """Values with hand-computable aggregates (see test_aggregate_known_answers)."""
    tl = datacomp_tasks()
    vals = {}
    shifts = iter([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    retr = iter([0.3, 0.6, 0.9])
    for t in tl.tasks:
        if t.key in NULL_TASKS:
            vals[t.key] = None
        elif "ImageNet" in t.groups:
            vals[t.key] = 0.25
        elif "ImageNet dist. shifts" in t.groups:
            vals[t.key] = next(shifts)
        elif "VTAB" in t.groups:
            vals[t.key] = 0.4
        elif "Retrieval" in t.groups:
            vals[t.key] = next(retr)
        else:
            vals[t.key] = 0.2
    return vals


def random_values(rng, decimals=None, base=0.3) -> dict:
    vals = {}
    for t in datacomp_tasks().tasks:
        if t.key in NULL_TASKS:
            vals[t.key] = None
            continue
        v = float(np.clip(base + 0.15 * rng.standard_normal(), 0, 1))
        vals[t.key] = round(v, decimals) if decimals else v
    return vals


GROUPS = {  # spec §5 (tracks.md), written out independently of the package's task table
    "ImageNet dist. shifts": [
        "ImageNet Sketch",
        "ImageNet v2",
        "ImageNet-A",
        "ImageNet-O",
        "ImageNet-R",
        "ObjectNet",
    ],
    "VTAB": [
        "Caltech-101",
        "CIFAR-100",
        "CLEVR Counts",
        "CLEVR Distance",
        "Describable Textures",
        "EuroSAT",
        "KITTI Vehicle Distance",
        "Oxford Flowers-102",
        "Oxford-IIIT Pet",
        "PatchCamelyon",
        "RESISC45",
        "SVHN",
        "SUN397",
    ],
    "Retrieval": ["Flickr", "MSCOCO", "WinoGAViL"],
}


def reference_lines(path: Path, precise_float: bool = False) -> list[str]:
    """Oracle for aggregate_scores.py (spec §5): pandas JSON-lines reader, dropna, 38 rows, means."""
    df = pd.read_json(path, lines=True, precise_float=precise_float)
    df = pd.concat([df.drop(["metrics"], axis=1), df["metrics"].apply(pd.Series)], axis=1)
    df = df.dropna(subset=["main_metric"])
    assert len(df) == 38
    res = dict(zip(df.dataset, df.main_metric))
    out = {"ImageNet": res["ImageNet 1k"]}
    for g, names in GROUPS.items():
        out[g] = np.mean([res[n] for n in names])
    out["Average"] = np.mean(list(res.values()))
    return [f"{g}: {s:.3f}" for g, s in out.items()]


def write_run(
    root: Path,
    name: str,
    values: dict,
    *,
    method="clipcov",
    seed=0,
    scale="small",
    size=3_000_000,
    params=None,
    drop=(),
    suite="datacomp38",
    samples: Path | None = None,
) -> Path:
    run = root / name
    write_results(run / "eval_results.jsonl", values, drop=drop)
    meta = {
        "method": method,
        "scale": scale,
        "seed": seed,
        "suite": suite,
        "dataset_size": size,
        "samples_seen": 12_800_000,
        "subset": {
            "path": str(samples) if samples else str(run / "subset.npy"),
            "manifest": {"filter": method, "params": params or {"fraction": 0.3}},
        },
        "train_args": ["--scale", scale],
        "created": "2026-11-20T12:00:00+00:00",
    }
    (run / "run.json").write_text(json.dumps(meta))
    return run


def const_values(v: float) -> dict:
    return {t.key: (None if t.key in NULL_TASKS else v) for t in datacomp_tasks().tasks}


# ----------------------------------------------------------------------------- aggregation


def test_aggregate_known_answers(tmp_path):
    f = write_results(tmp_path / "eval_results.jsonl", designed_values())
    agg = aggregate_file(f)
    assert agg.complete and agg.suite == "datacomp38"
    assert agg.scores["ImageNet"] == 0.25
    assert agg.scores["ImageNet dist. shifts"] == pytest.approx(0.35)
    assert agg.scores["VTAB"] == pytest.approx(0.4)
    assert agg.scores["Retrieval"] == pytest.approx(0.6)
    assert agg.scores["Average"] == pytest.approx(12.35 / 38)
    assert agg.lines() == [
        "ImageNet: 0.250",
        "ImageNet dist. shifts: 0.350",
        "VTAB: 0.400",
        "Retrieval: 0.600",
        "Average: 0.325",
    ]
    assert agg.lines() == reference_lines(f)
    assert len(agg.per_task) == 38


def test_missing_task_and_null_metric_are_partial(tmp_path):
    vals = designed_values()
    vals["misc/winogavil"] = None  # null main metric
    f = write_results(tmp_path / "eval_results.jsonl", vals, drop={"vtab/svhn"})
    agg = aggregate_file(f)
    assert not agg.complete
    assert agg.missing == ["SVHN"] and agg.null == ["WinoGAViL"]
    assert agg.scores["ImageNet"] == 0.25 and agg.scores["ImageNet dist. shifts"] == pytest.approx(
        0.35
    )
    assert (
        agg.scores["VTAB"] is None
        and agg.scores["Retrieval"] is None
        and agg.scores["Average"] is None
    )
    assert agg.partial_scores["VTAB"] == pytest.approx(0.4)
    assert agg.partial_scores["Retrieval"] == pytest.approx(0.45)
    assert agg.partial_scores["Average"] == pytest.approx((12.35 - 0.4 - 0.9) / 36)
    lines = agg.lines()
    assert lines[2] == "VTAB: partial 0.400 (12/13 tasks; missing: SVHN)"
    assert lines[3] == "Retrieval: partial 0.450 (2/3 tasks; missing: WinoGAViL (null metric))"
    assert lines[4].startswith(
        "Average: partial 0.307 (36/38 tasks; missing: SVHN, WinoGAViL (null metric))"
    )


def test_matches_reference_on_random_files(tmp_path):
    rng = np.random.default_rng(7)
    keys = [t.key for t in datacomp_tasks().tasks]
    naive_differs = 0
    for i in range(60):
        order = keys[:]
        random.Random(i).shuffle(order)
        vals = random_values(rng, decimals=(None, 3, 4, 5)[i % 4], base=rng.uniform(0.05, 0.7))
        if i % 4 == 2:  # a half-way value: printing it depends on how the JSON float was parsed
            vals["imagenet1k"] = round(int(rng.integers(0, 1000)) / 1000 + 0.0005, 4)
        f = write_results(tmp_path / f"r{i}.jsonl", vals, order=order)
        ref = reference_lines(f)
        assert aggregate_file(f).lines() == ref, f.read_text()
        naive_differs += reference_lines(f, precise_float=True) != ref
    assert naive_differs > 0  # the files exercise pandas' float parsing, not just the means


def test_parses_floats_like_pandas(tmp_path):
    """aggregate_scores.py sees pandas' (not correctly rounded) floats; so must we."""
    rng = np.random.default_rng(3)
    vals = random_values(rng)
    f = write_results(tmp_path / "e.jsonl", vals)
    rows = parse_eval_results(f.read_text())
    df = pd.read_json(f, lines=True)
    ours = [r.main_metric for r in rows if r.main_metric is not None]
    theirs = [m["main_metric"] for m in df["metrics"] if m["main_metric"] is not None]
    assert ours == theirs


def test_duplicates_extras_and_truncated_line(tmp_path, caplog):
    vals = designed_values()
    dup = json.dumps(
        {"key": "imagenet1k", "dataset": "ImageNet 1k", "metrics": {"main_metric": 0.5}}
    )
    extra = json.dumps({"key": "my/extra", "dataset": "Extra", "metrics": {"main_metric": 0.9}})
    f = write_results(tmp_path / "e.jsonl", vals, extra_lines=[dup, extra])
    with open(f, "a") as fh:
        fh.write('{"key": "cifar10", "dataset": "CIF')  # interrupted write
    agg = aggregate_file(f)
    assert agg.complete and agg.scores["ImageNet"] == 0.5  # last row wins
    assert agg.extra == ["Extra"] and agg.duplicates == ["ImageNet 1k"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": 1}\nnot json\n{"key": 2}\n')
    with pytest.raises(ClipsiftError, match="line 1"):
        aggregate_file(bad)


def _tiny_tsv(tmp_path) -> Path:
    p = tmp_path / "tiny_tasks.tsv"
    p.write_text(
        "# hand-made tiny suite\n"
        "task_key\tname\tmain_metric\tnum_classes\trandom_score\tsize\ttags\tgroups\n"
        "tiny/shape\tTiny shape\tacc1\t4\t0.25\t100\t\t\n"
        "tiny/colour\tTiny colour\tacc1\t8\t0.125\t100\t\t\n"
        "tiny/count\tTiny count\tacc1\t5\t0.2\t100\t\t\n"
        "tiny/retrieval\tTiny retrieval\tmean_recall@1\t\t\t100\tretrieval\t\n"
    )
    return p


def test_tiny_suite_groups_and_partial(tmp_path):
    tsv = _tiny_tsv(tmp_path)
    f = tmp_path / "eval_results.jsonl"
    rows = [("tiny/shape", 0.5), ("tiny/colour", 0.7), ("tiny/count", 0.9), ("tiny/retrieval", 0.1)]
    f.write_text(
        "".join(
            json.dumps({"key": k, "dataset": k, "metrics": {"main_metric": v}}) + "\n"
            for k, v in rows
        )
    )
    assert detect_suite([k for k, _ in rows]) == "tiny"
    agg = aggregate_file(f, tasks_file=tsv)
    assert agg.suite == "tiny" and agg.complete
    assert agg.scores["Classification"] == pytest.approx(0.7)
    assert agg.scores["Retrieval"] == pytest.approx(0.1)
    assert agg.scores["Average"] == pytest.approx(0.55)
    f.write_text(
        "".join(
            json.dumps({"key": k, "dataset": k, "metrics": {"main_metric": v}}) + "\n"
            for k, v in rows[:3]
        )
    )
    agg = aggregate_file(f, tasks_file=tsv)
    assert not agg.complete and agg.missing == ["Tiny retrieval"]
    assert agg.scores["Average"] is None and agg.partial_scores["Average"] == pytest.approx(0.7)
    with pytest.raises(ClipsiftError, match="tiny task list not found"):
        tiny_tasks(tmp_path / "absent.tsv")


# ----------------------------------------------------------------------------- published data


def test_published_import_round_trips(tmp_path):
    for scale in PUBLISHED_SCALES:
        text = (
            (REFERENCE / f"leaderboard_filtering_{scale}.tsv").read_text()
            if REFERENCE.exists()
            else None
        )
        entries = published(scale)
        if text is not None:
            assert len(entries) == len([ln for ln in text.splitlines() if ln.strip()])
            assert (
                parse_leaderboard_tsv(text, scale) == entries
            )  # shipped copy equals the reference
        again = parse_leaderboard_tsv(format_leaderboard_tsv(entries), scale)
        assert again == entries
        board = tables.build_leaderboard(scale, [], entries)
        assert tables.rows_from_csv(tables.to_csv(board)) == board.rows
        assert tables.rows_from_json(tables.to_json(board)) == board.rows
        md_rows = tables.rows_from_markdown(tables.to_markdown(board))
        assert [(r.method, r.imagenet, r.average, r.dataset_size, r.rank) for r in md_rows] == [
            (r.method, r.imagenet, r.average, r.dataset_size, r.rank) for r in board.rows
        ]
    small = {e.method: e for e in published("small")}
    assert (
        small["Metagradient Descent"].average == 0.214
        and small["Metagradient Descent"].dataset_size is None
    )
    assert (
        small["Baseline: No filtering"].dataset_size == 12_800_000
        and small["Baseline: No filtering"].is_baseline
    )
    base = published_baselines()
    assert parse_baselines_csv(format_baselines_csv(base)) == base
    assert {e.track for e in base} == {"filtering", "byod"} and len(base) == 40
    assert [e.method for e in published("medium", "byod")][0] == "Baseline: CC12M"


# ----------------------------------------------------------------------------- store


def test_store_groups_seeds_and_reads_datacomp_folders(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "clip_s0", const_values(0.3), seed=0)
    write_run(runs, "clip_s1", const_values(0.5), seed=1)
    write_run(runs, "clip_other", const_values(0.2), params={"fraction": 0.1})
    dc = runs / "nested" / "datacomp_eval"
    write_results(dc / "eval_results.jsonl", const_values(0.1))
    with open(dc / "info.pkl", "wb") as fh:
        pickle.dump(
            {
                "scale": "medium",
                "checkpoint": PosixPath("/ck/epoch_latest.pt"),
                "scale_config": {"model": "ViT-B-32"},
                "data_dir": PosixPath("/data"),
            },
            fh,
        )
    store = ResultsStore.from_paths([runs])
    assert len(store.runs) == 4 and store.scales == ["small", "medium"]
    groups = {g.label: g for g in store.groups}
    assert set(groups) == {"clipcov (fraction=0.3)", "clipcov (fraction=0.1)", "datacomp_eval"}
    g = groups["clipcov (fraction=0.3)"]
    assert g.seeds == [0, 1]
    mean, std = g.score("Average")
    assert mean == pytest.approx(0.4) and std == pytest.approx(math.sqrt(0.02))
    dcg = groups["datacomp_eval"]
    assert dcg.scale == "medium" and dcg.first.info["checkpoint"] == "/ck/epoch_latest.pt"


def test_info_pkl_refuses_foreign_classes(tmp_path):
    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    p = tmp_path / "info.pkl"
    with open(p, "wb") as fh:
        pickle.dump({"scale": "small", "x": Evil()}, fh)
    assert read_info_pkl(p) == {}
    assert not (tmp_path / "pwned").exists()


# ----------------------------------------------------------------------------- outputs


class _HTMLCollector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.imgs = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])


def _make_runs(root: Path) -> Path:
    runs = root / "runs"
    write_run(runs, "clip_s0", random_values(np.random.default_rng(0), base=0.22), seed=0)
    write_run(runs, "clip_s1", random_values(np.random.default_rng(1), base=0.22), seed=1)
    write_run(
        runs,
        "dbp_s0",
        random_values(np.random.default_rng(2), base=0.18),
        method="dbp",
        size=2_000_000,
    )
    write_run(
        runs,
        "neg_s0",
        random_values(np.random.default_rng(3), base=0.19),
        method="negclip",
        drop={"vtab/svhn"},
    )
    return runs


def test_build_writes_and_parses_every_format(tmp_path):
    import base64

    store = ResultsStore.from_paths([_make_runs(tmp_path)])
    out = tmp_path / "lb"
    boards, written = write_leaderboards(store, out)
    names = sorted(p.name for p in written)
    assert names == sorted(
        [
            "leaderboard_small.md",
            "leaderboard_small.csv",
            "leaderboard_small.json",
            "index.html",
            "small_average_vs_size.png",
            "small_average_vs_size.svg",
            "small_imagenet_vs_average.png",
            "small_imagenet_vs_average.svg",
        ]
    )
    board = boards[0]
    yours = {r.method: r for r in board.yours}
    assert yours["clipcov"].seeds == 2 and yours["clipcov"].average_std is not None
    neg = yours["negclip"]
    assert (
        not neg.complete and neg.rank is None and neg.missing == ["SVHN"] and board.rows[-1] is neg
    )
    ranks = [r.rank for r in board.rows if r.rank is not None]
    assert ranks == sorted(ranks) and len(board.rows) == 3 + len(published("small"))
    csv_rows = tables.rows_from_csv((out / "leaderboard_small.csv").read_text())
    assert csv_rows == board.rows
    assert tables.rows_from_json((out / "leaderboard_small.json").read_text()) == board.rows
    md_rows = tables.rows_from_markdown((out / "leaderboard_small.md").read_text())
    for a, b in zip(md_rows, board.rows):
        assert (a.method, a.rank, a.source, a.dataset_size, a.complete) == (
            b.method,
            b.rank,
            b.source,
            b.dataset_size,
            b.complete,
        )
        assert a.average == pytest.approx(b.average, abs=5e-4)
    obj = json.loads((out / "leaderboard_small.json").read_text())
    assert {r["label"] for r in obj["runs"]} == {"clipcov", "dbp", "negclip"}
    for png in out.glob("*.png"):
        with Image.open(png) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    for svg in out.glob("*.svg"):
        assert ET.parse(svg).getroot().tag.endswith("svg")
    parser = _HTMLCollector()
    parser.feed((out / "index.html").read_text())
    assert parser.tags.count("table") == 2 and len(parser.imgs) == 2
    for src in parser.imgs:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    assert "http://" not in (out / "index.html").read_text().replace(
        'href="http', ""
    )  # nothing fetched


def test_head_to_head(tmp_path):
    runs = tmp_path / "runs"
    a = write_run(runs, "a", const_values(0.3), method="a")
    b = write_run(runs, "b", const_values(0.35), method="b", drop={"cifar10"})
    groups = [ResultsStore.from_paths([a]).groups[0], ResultsStore.from_paths([b]).groups[0]]
    cmp = cmp_mod.build_comparison(groups)
    rows = {r.name: r for r in cmp.rows}
    assert rows["ImageNet"].diffs == [pytest.approx(0.05)]
    assert rows["CIFAR-10"].values[1] is None and rows["CIFAR-10"].diffs == [None]
    assert rows["Average"].values[1] is None  # b is partial: its Average is not scored
    assert cmp.wins() == [(37, 0, 0)] and cmp.missing == [[], ["CIFAR-10"]]
    back = cmp_mod.from_csv(cmp_mod.to_csv(cmp))
    assert [(r.name, r.values) for r in back.rows] == [(r.name, r.values) for r in cmp.rows]
    back = cmp_mod.from_json(cmp_mod.to_json(cmp))
    assert back.rows == cmp.rows and back.missing == cmp.missing
    md = cmp_mod.to_markdown(cmp)
    assert "| CIFAR-10 |  | 0.300 | — | — |" in md and "b vs a: better on 37 tasks" in md
    files = write_comparison(cmp, tmp_path / "h2h")
    assert sorted(p.suffix for p in files) == [".csv", ".html", ".json", ".md", ".png", ".svg"]
    with pytest.raises(ClipsiftError, match="at least two"):
        cmp_mod.build_comparison(groups[:1])


# ----------------------------------------------------------------------------- submit-pack


def _subset(path: Path, n: int, sort=True) -> Path:
    rng = np.random.default_rng(0)
    arr = np.empty(n, dtype=np.dtype("u8,u8"))
    arr["f0"] = rng.integers(0, 2**63, n, dtype=np.uint64)
    arr["f1"] = rng.integers(0, 2**63, n, dtype=np.uint64)
    if sort:
        arr = np.sort(arr, order=["f0", "f1"])
    np.save(path, arr)
    return path


INFO = SubmitInfo("clipcov", "A. Author", "a@example.org", "auser", "clipsift-small")


def test_submit_pack_complete(tmp_path):
    subset = _subset(tmp_path / "subset.npy", 1000)
    run = load_run(write_run(tmp_path / "runs", "r", designed_values(), size=1000, samples=subset))
    out, checks = write_submit_pack(run, tmp_path / "pack", INFO)
    assert all(c.ok for c in checks)
    assert (out / "small_scale" / "results.jsonl").read_bytes() == run.results_path.read_bytes()
    assert (out / "small_scale" / "samples" / "subset.npy").read_bytes() == subset.read_bytes()
    rec = json.loads((out / "submission.json").read_text())
    assert list(rec)[:14] == [
        "scale",
        "model",
        "dataset_size",
        "checkpoint",
        "batch_size",
        "learning_rate",
        "method_name",
        "author",
        "email",
        "hf_username",
        "hf_repo_name",
        "timestamp",
        "track",
        "writeup",
    ]
    assert (
        rec["scale"],
        rec["model"],
        rec["batch_size"],
        rec["learning_rate"],
        rec["dataset_size"],
    ) == ("small", "ViT-B-32", 4096, 0.0005, "1000")
    assert len(rec) == 14 + 38 and rec["ImageNet 1k"] == 0.25 and "FairFace" not in rec
    plan = json.loads((out / "upload_plan.json").read_text())
    assert set(plan["files"]) == {"small_scale/results.jsonl", "small_scale/samples/subset.npy"}
    assert plan["commit_message"] == "Upload artifacts (small scale)"
    with pytest.raises(ClipsiftError, match="not empty"):
        write_submit_pack(run, out, INFO)


def test_submit_pack_refuses_incomplete(tmp_path):
    good = _subset(tmp_path / "subset.npy", 100)
    unsorted = _subset(tmp_path / "unsorted.npy", 100, sort=False)
    run = load_run(
        write_run(tmp_path / "runs", "r", designed_values(), drop={"vtab/svhn"}, samples=good)
    )
    with pytest.raises(ClipsiftError, match="missing: SVHN"):
        write_submit_pack(run, tmp_path / "p1", INFO)
    run = load_run(write_run(tmp_path / "runs", "r2", designed_values(), samples=unsorted))
    no_email = SubmitInfo("m", "a", None, "u", "r")
    with pytest.raises(ClipsiftError) as exc:
        write_submit_pack(run, tmp_path / "p2", no_email)
    assert "--email is required" in str(exc.value) and "not sorted" in str(exc.value)
    run = load_run(
        write_run(tmp_path / "runs", "r3", designed_values(), scale="debug", samples=good)
    )
    with pytest.raises(ClipsiftError, match="scale 'debug'"):
        write_submit_pack(run, tmp_path / "p3", INFO)
    assert not any((tmp_path / p).exists() for p in ("p1", "p2", "p3"))


# ----------------------------------------------------------------------------- CLI


def _cli(argv):
    from clipsift.cli import main

    return main(argv)


def test_cli_commands(tmp_path, capsys):
    f = write_results(tmp_path / "e" / "eval_results.jsonl", designed_values())
    assert _cli(["leaderboard", "aggregate", str(f)]) == 0
    assert capsys.readouterr().out.splitlines() == reference_lines(f)
    part = write_results(
        tmp_path / "p" / "eval_results.jsonl", designed_values(), drop={"imagenet1k"}
    )
    assert _cli(["leaderboard", "aggregate", str(part)]) == 1
    assert (
        capsys.readouterr().out.splitlines()[0] == "ImageNet: n/a (0/1 tasks; missing: ImageNet 1k)"
    )
    runs = _make_runs(tmp_path)
    assert (
        _cli(
            [
                "leaderboard",
                "build",
                str(runs),
                "--out",
                str(tmp_path / "lb"),
                "--formats",
                "md,csv",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "## small scale" in out and sorted(p.name for p in (tmp_path / "lb").iterdir()) == [
        "leaderboard_small.csv",
        "leaderboard_small.md",
    ]
    assert (
        _cli(["leaderboard", "compare", str(runs / "dbp_s0"), "clipcov", "--from", str(runs)]) == 0
    )
    assert "clipcov − dbp" in capsys.readouterr().out
    assert _cli(["leaderboard", "published", "--scale", "xlarge", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0]["method"] == "Data Filtering Networks" and rows[0]["rank"] == "1"
    assert _cli(["leaderboard", "compare", str(runs / "dbp_s0"), "nope"]) == 1
    assert "nope" in capsys.readouterr().err
    subset = _subset(tmp_path / "s.npy", 10)
    run = write_run(tmp_path / "runs2", "r", designed_values(), size=10, samples=subset)
    argv = [
        "leaderboard",
        "submit-pack",
        str(run),
        "--out",
        str(tmp_path / "pack"),
        "--method-name",
        "m",
        "--author",
        "a",
        "--email",
        "a@b.c",
        "--hf-username",
        "u",
        "--hf-repo-name",
        "r",
    ]
    assert _cli(argv) == 0 and (tmp_path / "pack" / "submission.json").exists()


def test_shipped_tiny_task_list_if_present():
    from clipsift.leaderboards.tasks import tiny_tasks_path

    if not tiny_tasks_path().is_file():
        pytest.skip("clipsift/eval/tiny_tasks.tsv not shipped in this checkout")
    tl = tiny_tasks()
    assert all(t.key.startswith("tiny/") for t in tl.tasks)
    assert set(tl.group_order) >= {"Concepts", "Tail concepts", "Retrieval"}
    assert len(tl.averaged) == len(tl.tasks) and tl.members("Retrieval")


def test_tiny_runs_get_their_own_table(tmp_path):
    tsv = _tiny_tsv(tmp_path)
    for seed, shape in ((0, 0.5), (1, 0.7)):
        run = tmp_path / "runs" / f"t{seed}"
        run.mkdir(parents=True)
        rows = [
            ("tiny/shape", shape),
            ("tiny/colour", 0.7),
            ("tiny/count", 0.9),
            ("tiny/retrieval", 0.1),
        ]
        (run / "eval_results.jsonl").write_text(
            "".join(
                json.dumps({"key": k, "dataset": k, "metrics": {"main_metric": v}}) + "\n"
                for k, v in rows
            )
        )
        (run / "run.json").write_text(
            json.dumps({"method": "random", "scale": "tiny", "seed": seed, "suite": "tiny"})
        )
    store = ResultsStore.from_paths([tmp_path / "runs"], tasks_file=tsv)
    boards, written = write_leaderboards(
        store, tmp_path / "lb", formats=("md", "csv"), tasks_file=tsv
    )
    (board,) = boards
    assert (
        board.name == "tiny"
        and board.suite == "tiny"
        and board.group_names == ["Classification", "Retrieval"]
    )
    (row,) = board.rows  # no published entries for the tiny suite
    assert row.seeds == 2 and row.average == pytest.approx((0.6 + 0.7 + 0.9 + 0.1) / 4)
    assert row.groups["Classification"] == pytest.approx((0.6 + 0.7 + 0.9) / 3)
    cells = tables.parse_markdown_tables((tmp_path / "lb" / "leaderboard_tiny.md").read_text())[0][
        0
    ]
    assert (
        cells["Classification"] == "0.733"
        and cells["Retrieval"] == "0.100"
        and "ImageNet" not in cells
    )
    assert (
        tables.rows_from_csv((tmp_path / "lb" / "leaderboard_tiny.csv").read_text()) == board.rows
    )
