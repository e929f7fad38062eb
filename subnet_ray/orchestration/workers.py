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


def freeze_heap() -> None:
    """Moves every object alive now (mostly the modules torch, transformers, MLflow and Ray imported) out of the
    garbage collector's reach, after one last collection.

    Python's full collections rescan every object; with those imports alive, a local smoke run's full
    collections from its first stage output on took 0.71 s (the longest 0.41 s, inside the first
    fine-tuning: 0.68 s against 0.33 for the others), 0.15 s frozen (benchmarks/gc_freeze.py). The
    run's wall time is unchanged (the freeze's own collection costs about what it saves): what it
    buys is stage outputs that take what their work takes, which `estimate` is checked against.
    Frozen objects are never scanned again; what the stages create later is collected as before.
    """
    import gc

    gc.collect()
    gc.freeze()
