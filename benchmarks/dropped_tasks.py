"""The tasks dropped from the tiny suite (shape, texture, count), judged by today's learnability rule.

Suite version 6 dropped them under the stricter reading of the oracle criterion then in use (the
lead beyond 2 × the larger single-run std, 3 seeds). This script renders them again from each
world (the suite's own renderer, ``make_tiny_suite(..., tasks=...)``, into ``OUT/dropped_evalsets``),
evaluates every finished oracle and ``no_filter`` checkpoint of the folder on them, and prints the
oracle table's verdicts (``validity_tiny.learnable``: the lead paired by seed beyond 2 standard
errors over at least 10 seeds, the oracle at least twice chance). Evaluation only, no training.

    .venv/bin/python benchmarks/validity_tiny.py --out /tmp/w0 --pool-seed 0 --tables oracle   # 10 seeds
    .venv/bin/python benchmarks/dropped_tasks.py /tmp/w0 [/tmp/w1 ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from validity_tiny import learnable, read_run, seed_runs

from clipsift.eval.tasks import EvalTask
from clipsift.seedstats import mean_std, seed_gap

# as in suite version 5 (eval/tiny_tasks.tsv before commit 59d1ae5): key, name, classes, chance, images
DROPPED = [
    (EvalTask("tiny/shape", "Shape", "acc1", 480, 8), 0.125),
    (EvalTask("tiny/texture", "Texture", "acc1", 480, 8), 0.125),
    (EvalTask("tiny/count", "Count", "acc1", 480, 5), 0.2),
]


def scores(run: Path, suite: Path) -> dict[str, float] | None:
    """Main metric of each dropped task for one finished run folder; None without a checkpoint."""
    from clipsift.eval.evaluate import run_task
    from clipsift.safeload import load_info_pkl

    if read_run(run) is None or not (run / "info.pkl").exists():  # unfinished: its checkpoint may still be written
        return None
    info = load_info_pkl(run / "info.pkl")
    if not Path(info["checkpoint"]).exists():
        return None
    return {t.key: run_task(t, info, str(suite), batch_size=256, num_workers=0)["acc1"] for t, _ in DROPPED}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="validity_tiny.py --out folders with oracle tables")
    args = ap.parse_args()
    import torch

    from clipsift.eval.tiny_suite import make_tiny_suite

    torch.set_num_threads(1)
    for out in args.folders:
        if not (out / "pool" / "world.json").exists():
            sys.exit(f"{out}: no pool/world.json; run benchmarks/validity_tiny.py --out {out} --tables oracle first")
        suite = make_tiny_suite(out / "dropped_evalsets", out / "pool", tasks=[t for t, _ in DROPPED])
        runs = {label: {s: r for s, d in seed_runs(out, label).items() if (r := scores(d, suite)) is not None}
                for label in ("oracle", "no_filter")}
        print(f"\n{out}: {len(runs['oracle'])} oracle and {len(runs['no_filter'])} no_filter checkpoints")
        print("| task | chance | oracle | no_filter | tie rule (2 × larger single-run std) | learnable (paired by seed, 2 SE) |")
        print("|---|---|---|---|---|---|")
        for task, chance in DROPPED:
            o = {s: r[task.key] for s, r in runs["oracle"].items()}
            f = {s: r[task.key] for s, r in runs["no_filter"].items()}
            (mo, so), (mf, sf) = mean_std(list(o.values())), mean_std(list(f.values()))
            if mo is None or mf is None:
                print(f"| {task.name} | {chance:g} | — | — | — | no finished runs |")
                continue
            tie = seed_gap(list(o.values()), list(f.values()))
            ok, text = learnable(o, f, chance)
            print(f"| {task.name} | {chance:g} | {mo:.3f} ± {so or 0:.3f} | {mf:.3f} ± {sf or 0:.3f} | "
                  f"{tie.text() if tie else 'n/a'} | {'yes' if ok else 'no'}: {text} |")


if __name__ == "__main__":
    main()
