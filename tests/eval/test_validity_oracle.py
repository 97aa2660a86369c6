"""The oracle table of benchmarks/validity_tiny.py: its learnability verdict from finished run folders."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "validity_tiny.py"


@pytest.fixture(scope="module")
def validity():
    sys.path.insert(0, str(BENCH.parent))
    try:
        spec = importlib.util.spec_from_file_location("validity_tiny_under_test", BENCH)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(BENCH.parent))


def _run(out: Path, label: str, seed: int, concept: float, tail: float, retrieval: float) -> None:
    d = out / "runs" / f"{label}_s{seed}"
    d.mkdir(parents=True)
    scores = {"tiny/concept": concept, "tiny/concept_tail": tail, "tiny/retrieval": retrieval}
    (d / "eval_results.jsonl").write_text("".join(json.dumps({"key": k, "metrics": {"main_metric": v}}) + "\n"
                                                  for k, v in scores.items()))
    (d / "run.json").write_text(json.dumps({"average": sum(scores.values()) / 3, "dataset_size": 100,
                                            "samples_seen": 32768, "timings": {"cpu_s": 150.0}}))
    (d / "track_state.json").write_text(json.dumps({"complete": True}))


def _world(out: Path, seeds, tail_lead: float) -> None:
    """Seeds share a factor (as the tiny track's do); the oracle leads by 0.08 on concepts and retrieval."""
    for s in seeds:
        f = 0.06 * ((-1) ** s) * (1 + s % 3) / 2
        jitter = 0.01 * ((s * 7) % 5 - 2)
        _run(out, "no_filter", s, 0.17 + f, 0.07 + f, 0.20 + f)
        _run(out, "oracle", s, 0.25 + f + jitter, 0.07 + tail_lead + f - jitter, 0.38 + f)


def test_a_lead_paired_by_seed_is_learnable_though_single_runs_tie(validity, tmp_path):
    _world(tmp_path, range(10), tail_lead=0.08)
    plan = [e for e in validity.run_plan(0.3) if "oracle" in e["tables"]]
    text = validity.report(tmp_path, plan, ["oracle"], [0, 1, 2], list(range(10)))
    assert "* oracle vs no_filter: average" in text and "concept tied" in text  # the page's tie rule
    assert "  * concept: yes: beats (+0.080" in text and "  * concept_tail: yes: beats" in text
    assert "* every task learnable: yes" in text


def test_no_lead_or_too_few_seeds_is_not_learnable(validity, tmp_path):
    _world(tmp_path, range(10), tail_lead=0.0)
    plan = [e for e in validity.run_plan(0.3) if "oracle" in e["tables"]]
    text = validity.report(tmp_path, plan, ["oracle"], [0, 1, 2], list(range(10)))
    assert "  * concept_tail: no: does not beat" in text and "* every task learnable: no (concept_tail)" in text
    few = validity.report(tmp_path, plan, ["oracle"], [0, 1, 2], list(range(5)))
    assert "  * concept: no: too few seeds (< 10)" in few


def test_an_oracle_near_chance_is_not_learnable(validity):
    at_chance = {s: 0.035 + 0.001 * s for s in range(10)}
    below = {s: 0.001 * s for s in range(10)}
    ok, text = validity.learnable(at_chance, below, chance=1 / 32)
    assert not ok and "oracle 1.3× chance (needs 2× and 2 SE above)" in text
