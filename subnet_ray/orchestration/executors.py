"""Where a wave's nodes run: one small interface, three executors.

`run_sweep` hands each wave's plan (Tune trial name -> its missing nodes, in order) to an
executor; every executor ends in `stages.execute` for each node (`stages.execute_influence` for
the influence nodes of one fine-tuned model, together), so outputs, the ledger and
leases are the same whichever ran them.
- `LocalExecutor`: this process, one node after the other, no Ray.
- `TuneExecutor`: one Ray Tune trial per plan entry (resources, retries, live epoch metrics).
- `RayDataInfluence`: the influence wave of paper-sized sweeps (`influence.actors` > 1): the
  driver runs the variants of each fine-tuned model together on a Ray Data actor pool (Ray Data
  inside a Tune trial would sit in the trial's placement group and starve); other waves go to Tune.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm

from ..sweep.config import SweepSpec
from ..sweep.graph import Node
from ..stages import execute, execute_influence, influence_groups
from ..storage.store import Store
from .mlflow_values import epoch_metrics

INFLUENCE_WAVE = 3


class Executor(Protocol):
    """Runs one wave's plan: Tune trial name -> the trial's missing nodes, in order."""

    def run_wave(self, wave: int, label: str, plan: dict[str, list[Node]]) -> None: ...


class LocalExecutor:
    """Every node in this process; fine-tuning epochs reach MLflow as they end."""

    def __init__(self, spec: SweepSpec, store: Store, trials, progress: bool):
        self.spec, self.store, self.trials, self.progress = spec, store, trials, progress

    def run_wave(self, wave: int, label: str, plan: dict[str, list[Node]]) -> None:
        # one bar for the influence wave; training shows its own per-epoch bars
        show_nodes = self.progress and wave == INFLUENCE_WAVE
        for trial_nodes in tqdm(list(plan.values()), desc=label, disable=not show_nodes):
            for group in influence_groups(trial_nodes):
                execute_influence(group, self.spec, self.store)
            for n in trial_nodes:
                execute(n, self.spec, self.store, progress=self.progress and wave != INFLUENCE_WAVE,
                        on_epoch=lambda r, key=n.key: self.trials.live(key, r["epoch"], epoch_metrics(r)))


class TuneExecutor:
    """One Ray Tune trial per plan entry; the driver's Tune callback logs epochs live."""

    def __init__(self, spec: SweepSpec, store: Store, root: str, trials, progress: bool):
        self.spec, self.store, self.trials, self.progress = spec, store, trials, progress
        self.storage = f"{root.rstrip('/')}/ray_results" if "://" in root else str(Path(root).resolve() / "ray_results")

    def run_wave(self, wave: int, label: str, plan: dict[str, list[Node]]) -> None:
        from .tune import run_wave

        run_wave(self.spec, self.store.uri, plan, self.storage, f"{self.spec.name}-{label}", self.progress,
                 on_result=self.trials.tune_result)


class RayDataInfluence:
    """Tune for training waves; the influence wave from the driver, each model's variants on one Ray Data actor pool."""

    def __init__(self, tune: TuneExecutor):
        self.tune = tune

    def run_wave(self, wave: int, label: str, plan: dict[str, list[Node]]) -> None:
        if wave != INFLUENCE_WAVE:
            return self.tune.run_wave(wave, label, plan)
        from .influence_ray import influence_ray_jobs

        for trial_nodes in tqdm(list(plan.values()), desc=label, disable=not self.tune.progress):
            for group in influence_groups(trial_nodes):  # one actor pool per model, not per variant
                execute_influence(group, self.tune.spec, self.tune.store, engine=influence_ray_jobs, engine_name="ray-data")


def make_executor(kind: str, spec: SweepSpec, store: Store, root: str, trials, progress: bool) -> Executor:
    """Returns the executor for `kind` ('local' or 'ray') and the sweep's influence settings."""
    if kind == "local":
        return LocalExecutor(spec, store, trials, progress)
    tune = TuneExecutor(spec, store, root, trials, progress)
    return RayDataInfluence(tune) if spec.influence.actors > 1 else tune
