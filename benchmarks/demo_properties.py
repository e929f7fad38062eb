"""The demo's planted truth against the paper's effects, over model seeds.

Runs sweeps/demo.yaml (executor local, one process) with each training seed given on the
command line (default 1-5) in one sweep, so data and the other seed-free stages are shared,
and prints one JSON line per seed: the headline effects (subnet_ray.analysis.effects:
in-language positive shares of the full model, heads kept per language, Fig 2 diagonal,
random-mask changes, Fig 8 correlation) and whether each is as the paper reports it; then a
line counting, per check, the seeds it holds on (target: at least 4 of 5); with several seeds,
one line per task of the pooled report: the seed-mean in-language shares and changes with 95%
intervals over seeds and test examples.

    python benchmarks/demo_properties.py [--sweep FILE] [--root DIR] [SEED ...]

With --root the artifact store is kept there (a rerun computes only what is missing, e.g.
one more seed); without it, a temporary folder. --sweep measures another world (default the
demo's own).
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

from subnet_ray.sweep.config import load_sweep
from subnet_ray.orchestration.runner import run_sweep

DEMO = Path(__file__).resolve().parent.parent / "sweeps" / "demo.yaml"


def _with_ci(record: dict, key: str) -> dict:
    """Returns {language: [mean, ci_low, ci_high]} of one pooled summary entry, rounded."""
    return {lang: [round(v, 2), *(round(c, 2) for c in record[f"{key}_ci"][lang])] for lang, v in record[key].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", help="artifact store folder to keep (default: a temporary one)")
    parser.add_argument("--sweep", default=str(DEMO), help="sweep file to measure (default: sweeps/demo.yaml)")
    parser.add_argument("seeds", nargs="*", type=int, default=[1, 2, 3, 4, 5])
    args = parser.parse_args()
    seeds = args.seeds
    spec = load_sweep(args.sweep)
    spec = spec.model_copy(update={"training": spec.training.model_copy(update={"seeds": seeds})})
    with tempfile.TemporaryDirectory() as d:
        start = time.perf_counter()
        run = run_sweep(spec, Path(args.root or d), executor="local", progress=False)
        wall = time.perf_counter() - start
        held: dict[str, int] = {}
        for folder in sorted(f for f in run.reports if not f.name.endswith("-seeds")):  # the pooled report is extra
            summary = json.loads((folder / "summary.json").read_text())
            seed = int(folder.name.rsplit("seed", 1)[1]) if len(seeds) > 1 else seeds[0]
            for task, effects in summary["effects"].items():
                print(json.dumps({"benchmark": "demo_properties", "seed": seed, **effects}), flush=True)
                for name, ok in effects["checks"].items():
                    held[name] = held.get(name, 0) + (ok == "holds")
        for folder in [f for f in run.reports if f.name.endswith("-seeds")]:
            pooled = json.loads((folder / "summary.json").read_text())
            for task, comps in pooled["comparisons"].items():
                line = {"benchmark": "demo_properties_pooled", "task": task, "seeds": pooled["training_seeds"]}
                if "full" in pooled["shares"].get(task, {}):
                    line["full_in_language_pos"] = _with_ci(pooled["shares"][task]["full"], "in_language_pos")
                for name, key in (("full+subnet vs full", "subnet_in_language_change"), ("sft+subnet vs full", "sft_in_language_change")):
                    if name in comps:
                        line[key] = _with_ci(comps[name], "in_language_pos_change")
                random = next((k for k in comps if k.startswith("full+random")), None)
                if random:
                    line["random_in_language_change"] = _with_ci(comps[random], "in_language_pos_change")
                line["verdicts"] = pooled["effects"][task]["checks"]
                print(json.dumps(line), flush=True)
    print(json.dumps({"benchmark": "demo_properties_summary", "sweep": spec.name, "seeds": seeds, "wall_s": round(wall, 1),
                      "waves_s": {k: round(v, 1) for k, v in run.seconds.items()},
                      "seeds_holding": held, "target_seeds_holding": max(1, len(seeds) - 1)}))


if __name__ == "__main__":
    main()
