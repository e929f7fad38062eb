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
    from subnet_ray.config import load_sweep
    from subnet_ray.orchestration.runner import run_sweep

    run = run_sweep(load_sweep(DEMO), tmp_path_factory.mktemp("demo"), executor="local", progress=False)
    (folder,) = run.reports
    return json.loads((folder / "summary.json").read_text())["effects"]["babel"]


CHECKS = ["full_cross_language", "heads_kept", "subnet_raises_in_language", "random_below_subnet",
          "similarity_tracks_influence"]


@pytest.mark.slow
@pytest.mark.parametrize("check", CHECKS)
def test_demo_shows_the_papers_effect(demo_effects, check):
    assert demo_effects["checks"][check] is True, json.dumps({k: v for k, v in demo_effects.items() if k != "checks"})
