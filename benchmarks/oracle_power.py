"""How often each oracle criterion would pass, for the gap and seed spread the oracle tables measured.

The tiny track's validity check asks the oracle (clean ground truth) to beat ``no_filter`` on every
task. This script reads finished oracle tables (``validity_tiny.py --out DIR --tables oracle``, one
folder per world), pools per task the oracle − ``no_filter`` gap (mean over the folders) and each
side's seed std (root mean square over the folders), then draws seed scores from normal
distributions with those parameters to estimate, for several numbers of seeds, how often:

* ``2-std``: the gap exceeds 2 × the larger of the two seed stds (the rule in ``clipsift.seedstats``);
* ``Welch 2-sided`` / ``Welch 1-sided``: Welch's t-test on the means gives p < 0.05 (two-sided, or
  one-sided for oracle > no_filter);
* ``paired 2 SE``: the learnability rule ``validity_tiny.py`` applies (``clipsift.seedstats.paired_gap``):
  the mean per-seed difference exceeds 2 standard errors.

Every draw shares a seed factor between the two methods, with the correlation measured between
their seed scores (mean over the folders). The 2-std and Welch rules ignore the pairing, but the
shared factor still narrows the real difference of the means, so they pass more often than with
independent seeds.

Each cell gives the chance for Concepts, Tail concepts, both on one world, and both on three worlds
(the cube of one world's, assuming worlds alike and independent). The two tasks are drawn
independently; in the runs their seed scores rise and fall together, so "both" is a lower bound.

    .venv/bin/python benchmarks/oracle_power.py /tmp/w0 /tmp/w1 /tmp/w2 [--seeds 3 5 8 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import ttest_ind, ttest_rel
from validity_tiny import read_run, seed_runs

from clipsift.seedstats import TIE_SIGMAS, gap_from_stats, mean_std, paired_gap

TASKS = {"tiny/concept": "Concepts", "tiny/concept_tail": "Tail concepts"}


def _runs(out: Path, label: str) -> dict[int, dict]:
    """{seed: scores} of the finished runs ``OUT/runs/<label>_s<seed>``."""
    return {s: r for s, d in seed_runs(out, label).items() if (r := read_run(d))}


def measured(folders: list[Path]) -> dict[str, tuple[float, float, float, float]]:
    """Per task: (mean gap, RMS oracle std, RMS no_filter std, mean seed correlation) over the folders.

    Also prints, per folder and task, the measured verdicts: the gap against 2 × the larger seed std,
    Welch's p, and over the shared seeds the paired view (a seed fixes the initialisation): the
    correlation of the two methods' scores, 2 std of the per-seed difference, and the paired t-test's p.
    """
    per: dict[str, list[tuple[float, float, float]]] = {k: [] for k in TASKS}
    corr: dict[str, list[float]] = {k: [] for k in TASKS}
    for out in folders:
        oracle, none = _runs(out, "oracle"), _runs(out, "no_filter")
        if len(oracle) < 2 or len(none) < 2:
            sys.exit(f"{out}: needs at least 2 finished oracle and no_filter runs (benchmarks/validity_tiny.py --out {out} --tables oracle)")
        shared = sorted(oracle.keys() & none.keys())
        cells = []
        for key in TASKS:
            a, b = [r[key] for r in oracle.values()], [r[key] for r in none.values()]
            (mo, so), (mn, sn) = mean_std(a), mean_std(b)
            per[key].append((mo - mn, so, sn))
            cell = f"{TASKS[key]} {gap_from_stats(mo, so, mn, sn).text()}, Welch p {ttest_ind(a, b, equal_var=False).pvalue:.3f}"
            if len(shared) > 2:
                pa, pb = [oracle[s][key] for s in shared], [none[s][key] for s in shared]
                paired = paired_gap(dict(zip(shared, pa)), dict(zip(shared, pb)))
                corr[key].append(float(np.corrcoef(pa, pb)[0, 1]))
                cell += (f"; paired over {len(shared)} seeds: r {corr[key][-1]:+.2f}, 2σ of the difference "
                         f"{TIE_SIGMAS * paired.se * np.sqrt(paired.n):.3f}, paired t p {ttest_rel(pa, pb).pvalue:.3f}; "
                         f"learnability rule: {paired.text()}")
            cells.append(cell)
        print(f"{out}: {len(oracle)} oracle and {len(none)} no_filter seeds\n  " + "\n  ".join(cells))
    return {k: (float(np.mean([g for g, _, _ in v])), float(np.sqrt(np.mean([so**2 for _, so, _ in v]))),
                float(np.sqrt(np.mean([sn**2 for _, _, sn in v]))), float(np.mean(corr[k])) if corr[k] else 0.0)
            for k, v in per.items()}


def pass_rates(gap: float, s_oracle: float, s_none: float, r: float, n: int, draws: int, rng) -> dict[str, np.ndarray]:
    """Per criterion, whether each of ``draws`` simulated n-seed tables passes (seed correlation r)."""
    shared = rng.normal(size=(draws, n)) * np.sqrt(max(r, 0.0))
    own = np.sqrt(1 - max(r, 0.0))
    o = gap + s_oracle * (shared + own * rng.normal(size=(draws, n)))
    f = s_none * (shared + own * rng.normal(size=(draws, n)))
    per_seed = o - f
    d = per_seed.mean(1)
    return {
        "paired 2 SE": d > TIE_SIGMAS * per_seed.std(1, ddof=1) / np.sqrt(n),
        "2-std": d > TIE_SIGMAS * np.maximum(o.std(1, ddof=1), f.std(1, ddof=1)),
        "Welch 2-sided": ttest_ind(o, f, axis=1, equal_var=False).pvalue < 0.05,
        "Welch 1-sided": ttest_ind(o, f, axis=1, equal_var=False, alternative="greater").pvalue < 0.05,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="validity_tiny.py --out folders with oracle tables")
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 5, 8, 10])
    ap.add_argument("--draws", type=int, default=20000)
    ap.add_argument("--rng", type=int, default=0)
    args = ap.parse_args()
    params = measured(args.folders)
    print(f"measured over {len(args.folders)} world(s): " + "; ".join(
        f"{TASKS[k]} gap {g:+.3f}, seed std oracle {so:.3f}, no_filter {sn:.3f} (gap / larger std {g / max(so, sn):.2f}), "
        f"seed correlation {r:+.2f}" for k, (g, so, sn, r) in params.items()))
    rng = np.random.default_rng(args.rng)
    names = ["2-std", "Welch 2-sided", "Welch 1-sided", "paired 2 SE"]
    print("\n| seeds | " + " | ".join(f"{n}: Concepts / Tail / both / 3 worlds" for n in names) + " |\n|---|" + "---|" * len(names))
    for n in args.seeds:
        res = {k: pass_rates(*params[k], n, args.draws, rng) for k in TASKS}
        cells = []
        for name in names:
            c, t = res["tiny/concept"][name], res["tiny/concept_tail"][name]
            both = float((c & t).mean())
            cells.append(f"{c.mean():.2f} / {t.mean():.2f} / {both:.2f} / {both**3:.2f}")
        print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
