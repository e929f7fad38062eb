"""What every Ray worker process of a sweep shares: its environment and its thread policy."""
from __future__ import annotations

# OMP_WAIT_POLICY: a spinning OpenMP pool beside another busy process made a tiny step 19x slower.
# RAY_CHDIR_TO_TRIAL_DIR: trials keep the launch folder as their working dir (relative paths).
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
              "RAY_CHDIR_TO_TRIAL_DIR": "0"}


def use_cpus(cpus: float) -> int:
    """Returns the torch thread count set for a process given `cpus` CPUs (at least 1).

    Every process computing nodes (driver, Tune trial, Ray Data actor, scoring task) uses the
    CPUs Ray gave it: two processes each on all cores ruin each other, and float sums depend
    on the thread count, so equal counts give the same numbers on every executor.
    """
    import torch

    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    return threads
