"""The demo's planted truth shows the paper's headline effects (one demo run, its own seed).

Each check is a verdict of subnet_ray.analysis.verdicts on the demo report's summary.json (`holds`:
the paper's direction, its 95% interval clear of 0 or of chance);
benchmarks/demo_properties.py measures the same over 5 model seeds (numbers in the notes).
"""
import importlib.util
import json
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent.parent / "sweeps" / "demo.yaml"
BENCH = DEMO.parent.parent / "benchmarks" / "mask_families.py"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """Returns (spec, root, SweepRun) of the demo run once for this module (about 4 minutes idle): every test here reads it."""
    from subnet_ray.sweep.config import load_sweep
    from subnet_ray.orchestration.runner import run_sweep

    spec, root = load_sweep(DEMO), tmp_path_factory.mktemp("demo")
    return spec, root, run_sweep(spec, root, executor="local", progress=False)


@pytest.fixture(scope="module")
def demo_effects(demo_run):
    (folder,) = demo_run[2].reports
    return json.loads((folder / "summary.json").read_text())["effects"]["babel"]


# Not shown on the demo's own seed (model seed 1; measured by benchmarks/demo_properties.py, the
# same run): xa's own subnetwork lowers its in-language share (-0.6 points) about as much as the random masks
# do (mean -0.4), so Fig 3's contrast is absent on xa; and since verdicts follow the 95% intervals
# (issue 34), Fig 2's rise clears 0 only for xb (measured 2026-12-07: xa -0.3 [-1.7, +1.2], xb +4.9
# [+2.4, +7.3], ya +4.0 [-2.2, +10.2], yb +2.1 [-2.1, +6.3]): the point values rise on 3 of 4
# languages, the old +2-on-average rule called that a pass. Kept as expected failures, not loosened:
# a world that shows them on this seed turns them into passes.
UNREACHED = {
    "random_below_subnet": "seed 1, xa: random masks -0.4 points on average vs -0.6 for its own subnetwork",
    "subnet_raises_in_language": "seed 1: the Fig 2 intervals of xa, ya and yb include 0 (inconclusive); xb holds",
}
CHECKS = [pytest.param(c, marks=pytest.mark.xfail(reason=UNREACHED[c], strict=False)) if c in UNREACHED else c
          for c in ("full_cross_language", "subnet_raises_in_language", "random_below_subnet",
                    "similarity_tracks_influence")]


@pytest.mark.slow
@pytest.mark.parametrize("check", CHECKS)
def test_demo_shows_the_papers_effect(demo_effects, check):
    assert demo_effects["checks"][check] == "holds", json.dumps(demo_effects["evidence"][check])


def _mask_families():
    """Returns benchmarks/mask_families.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("mask_families", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_demo_related_languages_have_more_similar_masks(demo_run):
    """The guard of benchmarks/mask_families.py's demo world (over model seeds 1-5: mean within-family mask cosine
    0.826 vs across 0.611, within above across on seeds 1-4) on the demo run's own seed: its subnetworks of xa and xb,
    and of ya and yb, are more alike than those of languages of different families (measured 2026-12-07: heads kept
    14 12 6 6 of 16, within 0.880 vs across 0.681)."""
    from subnet_ray.storage.store import store_for
    from subnet_ray.subnetworks import load_mask
    from subnet_ray.sweep.graph import graph

    spec, root, _ = demo_run
    (node,) = [n for n in graph(spec) if n.stage == "subnetworks"]
    task = spec.tasks[0]
    masks = {lang: load_mask(store_for(root).path(node.key) / lang)[0] for lang in task.languages}
    within, across = _mask_families().within_across(masks, task.babel.families)
    assert within > across, (within, across, {lang: int(m.sum()) for lang, m in masks.items()})
