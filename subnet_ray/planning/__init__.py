"""What `validate` and `estimate` tell before a sweep runs: will it run, and what will it cost.

- `preflight` (with `preflight_data`): every check that would otherwise fail mid-run (data files,
  labels, parallel items, model, device, root, tracking store, Ray address), one error line each;
- `sizes`: checkpoint and sketch bytes from the sweep alone (no torch): validate's cost headline;
  `shapes` (a model's shape from config.json: parameters, Linear layers, activation bytes) and `memory`
  (training, influence and sketch memory, which GPU) under it;
- `cost/`: the cost model (`cost.project`): hours, memory and bytes per stage and wave, calibrated here.

It sits on top of the package: the preflight asks the tracking store and the Ray address as the
orchestration would, and the cost model rehearses the real passes and Tune trials.
"""
