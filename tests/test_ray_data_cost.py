"""estimate of the influence wave on Ray Data (issue 33 part 3): counted as influence_ray_jobs runs it."""
from pathlib import Path

import pytest

from subnet_ray.planning.cost.estimate import Calibration, estimate
from subnet_ray.planning.cost.ray_data import GroupCost, at_load, stand_in_masks
from subnet_ray.sweep.config import load_sweep

ISSUE_SWEEP = Path(__file__).resolve().parents[1] / "benchmarks" / "sweeps" / "influence_paper_shape.yaml"
FIXED = {"startup": 7.0, "data": 0.5, "ray_start": 6.0, "tracking": 2.0, "report": 9.0, "tune_wave": 1.5, "tune_trial": 4.0,
         "ray_data": {"driver_base": 2**30, "pool_start": 10.0, "task_start": 2.0, "task_round": 1.0, "collect_call": 0.5, "collect_row": 1e-5, "row": 1e-4,
                      "table_row": 100.0}}


def _calibration() -> Calibration:
    base = {f: 0.0 for f in ("build", "train_batch", "train_batch_sft", "first_steps", "save_epoch", "load", "importance_example",
                             "importance_batch", "importance_call", "encode_example", "score_fixed", "mask_io", "node_io", "table_io")}
    return Calibration(device="cpu", eval_example={32: 0.0, 64: 0.0}, peak_train_bytes=None, peak_sketch_bytes=None,
                       sketch_example=1e-3, score_unit=1e-9, **base)


def test_estimate_counts_pools_rows_and_scoring_tasks_of_the_issue_sweep():
    """The issue's sweep (5 languages, 10K training and 500 test examples each, 3 checkpoints, top_k 100, actors 2), counted
    by hand from influence_ray_jobs: one pass per model (each model's sketches, 19,968 B a row over 3 checkpoints, fit the
    2,048 MB budget), the training set once per distinct mask, each (mask, test examples) set once, parts of more than
    256 test examples scored in tasks of 256."""
    spec = load_sweep(ISSUE_SWEEP)
    est = estimate(spec, calibration={"babel": _calibration()}, executor="ray", fixed=FIXED, cluster_cpus=2, side_by_side={})
    full, sft, rsft = (est.ray_data[f"babel/{m}/influence"] for m in ("full/seed1", "sft/seed1", "random-sft/seed1/rand1"))
    # full: masks none, 5 own (subopt:L uses L's own), random xa = 7; test sets: all 2,500 (none), 5 x 500 (own), xa's
    # 500 under the random mask and under xb's, xc's, ya's, yb's masks
    assert (full.pools, full.passes[0].sets, full.rows) == (1, 7 + 11, 3 * (7 * 10_000 + 2_500 + 5 * 500 + 500 + 4 * 500))
    assert full.scoring_tasks == 10 + 5 * 2 + 2 + 4 * 2 and full.driver_parts == 0  # ceil(n / 256) per part
    # sft: 5 own masks, union and intersect of xa-xb (1,000 test examples each)
    assert (sft.pools, sft.passes[0].sets, sft.rows) == (1, 7 + 7, 3 * (7 * 10_000 + 5 * 500 + 2 * 1_000))
    assert sft.scoring_tasks == 5 * 2 + 4 + 4
    assert (rsft.pools, rsft.rows, rsft.scoring_tasks) == (1, 3 * (5 * 10_000 + 5 * 500), 5 * 2)
    # the wave: the three models one after the other from the driver, no Tune trial or wave cost
    nodes = [n for n in est.nodes if n.stage == "influence"]
    assert est.waves()["influence"] == pytest.approx(sum(n.seconds for n in nodes))
    assert sum(n.seconds for n in nodes) == pytest.approx(full.seconds + sft.seconds + rsft.seconds)
    # each pool pays its start; the sketching divides over the 2 actors
    assert full.actors == pytest.approx(10.0 + full.rows * 1e-3 / 2)
    # the driver's extra memory at its peak: the full model's sketches held, the materialized pass mapped, a part's training
    # put, and twice the top-k table of its largest part (2,500 test examples x 4 checkpoints (3 and the sum) x 2 signs x 100)
    row = 1664 * 4 * 3
    assert full.driver_peak_bytes == 77_500 * row + 77_500 * (row + 3 * 64) + 10_000 * row + 2 * 2_500 * 4 * 2 * 100 * 100
    assert est.driver_peak_bytes == 2**30 + full.driver_peak_bytes
    # the Tune row counts the other waves' trials only: pretrain, train (full), sft (sft, random-sft)
    assert est.by_stage(1, 0)["tune"]["seconds"] == pytest.approx(4 * 4.0 + 3 * 1.5)


def test_fewer_actors_or_more_cpus_change_only_what_they_run():
    spec = load_sweep(ISSUE_SWEEP)
    one = spec.model_copy(update={"influence": spec.influence.model_copy(update={"actors": 4})})
    a = estimate(spec, calibration={"babel": _calibration()}, executor="ray", fixed=FIXED, cluster_cpus=2, side_by_side={})
    b = estimate(one, calibration={"babel": _calibration()}, executor="ray", fixed=FIXED, cluster_cpus=8, side_by_side={})
    ga, gb = a.ray_data["babel/full/seed1/influence"], b.ray_data["babel/full/seed1/influence"]
    assert gb.rows == ga.rows and gb.actors_at_once == 4 and ga.actors_at_once == 2
    assert gb.actors == pytest.approx(10.0 + ga.rows * 1e-3 / 4)
    assert gb.tasks < ga.tasks and gb.driver == pytest.approx(ga.driver)  # 8 task slots against 2; the driver's work the same
    local = estimate(spec, calibration={"babel": _calibration()}, executor="local", fixed=FIXED)
    assert not local.ray_data and local.driver_peak_bytes is None  # no Ray: the single-process path, costed as before


def test_at_load_slows_each_part_by_its_own_factor():
    g = GroupCost(driver=10.0, actors=20.0, tasks=6.0, actors_at_once=2, task_slots=3)
    assert at_load(g, g.seconds, 1.0, lambda m, work: 1.0) == pytest.approx(36.0)
    factor = {2: 1.5, 3: 2.5}
    # node I/O beyond the group's own seconds is the driver's
    assert at_load(g, g.seconds + 4.0, 2.0, lambda m, work: factor[m]) == pytest.approx(14.0 * 2.0 + 20.0 * 1.5 + 6.0 * 2.5)


def test_stand_in_masks_are_distinct():
    masks = stand_in_masks(40, (4, 4))
    assert len({tuple(m.flatten().tolist()) for m in masks}) == 40 and all(m.shape == (4, 4) for m in masks)
    with pytest.raises(ValueError):
        stand_in_masks(4, (1, 2))


def test_parts_of_one_shard_are_scored_in_the_driver():
    """200 test examples per language: a part of one language fits one shard of 256 (the driver scores it), the full
    model's part of all five languages (1,000) goes to 4 tasks; the SFT model's union and intersect parts (400) to 2 each."""
    spec = load_sweep(ISSUE_SWEEP)
    spec = spec.model_copy(update={"influence": spec.influence.model_copy(update={"test_per_language": 200})})
    est = estimate(spec, calibration={"babel": _calibration()}, executor="ray", fixed=FIXED, cluster_cpus=2, side_by_side={})
    full, sft = est.ray_data["babel/full/seed1/influence"], est.ray_data["babel/sft/seed1/influence"]
    assert (full.scoring_tasks, full.driver_parts) == (4, 5 + 1 + 4)
    assert (sft.scoring_tasks, sft.driver_parts) == (2 + 2, 5)
