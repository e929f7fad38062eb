"""The demo's planted truth shows the paper's headline effects (one demo run, its own seed).

Each check is a verdict of subnet_ray.analysis.verdicts on the demo report's summary.json (`holds`:
the paper's direction, its 95% interval clear of 0 or of chance);
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
