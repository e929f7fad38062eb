"""The sweep's runs in MLflow's UI: a saved view (columns, order, charts) stored on the experiment, and its URL.

What MLflow 3.17's UI does (read in its source, mlflow/server/js/src, and its shipped bundle):
- The mode (GenAI or model training) is the `workflowType` URL parameter, else the browser's
  localStorage `mlflow.workflowType`, else GenAI. The experiment tag `mlflow.experimentKind` is
  read only when workflow-based navigation is off, and in 3.17 it is always on.
- The runs table's columns, chart cards and sections are UI state: localStorage per browser, or a
  saved view: the experiment tag `mlflow.sharedViewState.<key>` holding {name, createdAt,
  updatedAt, state}. `?viewStateShareKey=<key>` on the runs page loads it, unless the URL also
  carries a search facet (orderByKey, searchFilter...); the "Saved views" menu lists it.
- Child runs are nested (collapsed) under their parent while the table is sorted by start time,
  and a saved view leaves `runsExpanded` out, so the view sorts by run name instead: every run
  is then a row of its own.
- `compareRunsMode=CHART` opens the chart view of the same view; with `isAccordionReordered` our
  chart section stays above the sections MLflow generates per metric-name prefix. With `groupBy`
  (params) and `useGroupedValuesInCharts`, the table's group rows and the charts show the
  group's average; group rows are expanded unless `groupsExpanded` says otherwise.

Two views: every run as a row (the runs table `subnet-ray ui` prints), and the runs grouped by
method and grid branch, averaged over seeds (the chart view it prints). Beside accuracy, both show
the headline correlations (analysis/headline.py names them): Fig 7's specialisation vs accuracy
of the full and SFT models, and Fig 8's mask similarity vs positive cross-language influence.
"""
from __future__ import annotations

import base64
import json
import time
import zlib
from urllib.parse import urlencode

TAG_PREFIX = "mlflow.sharedViewState."
VIEW_KEY, GROUPED_KEY = "subnet-ray-runs", "subnet-ray-groups"
VIEW_TAG = TAG_PREFIX + VIEW_KEY
VIEW_NAMES = {VIEW_KEY: "subnet-ray: every run", GROUPED_KEY: "subnet-ray: method x branch (mean over seeds)"}
SWEEP_TAG = "subnet_ray.sweep"  # on every experiment a sweep made
WORKFLOW = "machine_learning"  # MLflow's model-training mode
SECTION = "subnet-ray-compare"  # uuid of the chart section holding the comparison charts
ACCURACY, CHANGE = "test_accuracy_mean", "change_in_pos_mean"
NAME_COLUMN = "attributes.`Run Name`"
TAG_LIMIT = 20000  # mlflow.utils.validation.MAX_EXPERIMENT_TAG_VAL_LENGTH (checked by the tests)
DEFLATE = "deflate;"  # how MLflow's UI marks a compressed view state


def _column(kind: str, key: str) -> str:
    """Returns MLflow's column id of a metric, param or tag key (its 'canonical sort key')."""
    return f"{kind}.`{key}`"


def headline_correlations(methods: list[str] | None = None) -> list[str]:
    """Returns the Pearson r metrics of the headline correlations a sweep with `methods` logs: Fig 7 (specialisation
    vs accuracy) of the full model and, with SFT, of the SFT model; Fig 8 (mask similarity vs positive
    cross-language share) of the subnetwork variant the report uses (SFT's when the sweep has it)."""
    sft = "sft" in (methods or ["full", "sft"])
    return ["corr/fig07/full/pearson_r", *(["corr/fig07/sft_subnet/pearson_r"] if sft else []),
            f"corr/fig08/{'sft_subnet' if sft else 'full_subnet'}/pearson_r"]


def headline_keys(languages: list[str], grid_keys: list[str], multi_task: bool = False,
                  methods: list[str] | None = None) -> list[tuple[str, str]]:
    """Returns the runs table's (kind, key) columns in order: task, method and seeds, the gridded settings,
    test accuracy (mean, per language), the headline correlations, in-language change against the full model
    (top positive: mean, per language; top negative: mean), heads disabled per language."""
    tags = [("tags", "task")] if multi_task else []
    params = [("params", p) for p in ("method", "seed", "random_seed", *(f"grid.{k}" for k in grid_keys))]
    metrics = [ACCURACY, *(f"test_accuracy/{lang}" for lang in languages), *headline_correlations(methods),
               CHANGE, *(f"change_in_pos/{lang}" for lang in languages), "change_in_neg_mean",
               *(f"heads_disabled/{lang}" for lang in languages)]
    return [*tags, *params, *(("metrics", m) for m in metrics)]


def _charts(grid_keys: list[str], grouped: bool, methods: list[str] | None = None) -> list[dict]:
    """Returns the comparison chart cards: accuracy and in-language change per run (per group), one against
    the other, each headline correlation, and (runs only: with groups MLflow 3.17 left it out of the section,
    seen in Chromium) method and grid settings against both."""
    common = {"deleted": False, "isGenerated": False, "metricSectionId": SECTION, "runsCountToCompare": 100}
    parallel = {**common, "uuid": "subnet-ray-parallel", "type": "PARALLEL", "showAllRuns": True,
                "selectedParams": ["method", *(f"grid.{k}" for k in grid_keys)], "selectedMetrics": [ACCURACY, CHANGE]}
    return [
        {**common, "uuid": "subnet-ray-accuracy", "type": "BAR", "metricKey": ACCURACY},
        {**common, "uuid": "subnet-ray-change", "type": "BAR", "metricKey": CHANGE},
        {**common, "uuid": "subnet-ray-scatter", "type": "SCATTER",
         "xaxis": {"key": ACCURACY, "type": "METRIC"}, "yaxis": {"key": CHANGE, "type": "METRIC"}},
        *({**common, "uuid": f"subnet-ray-{key.replace('/', '-')}", "type": "BAR", "metricKey": key}
          for key in headline_correlations(methods)),
        *([] if grouped else [parallel]),
    ]


def view_state(languages: list[str], grid_keys: list[str], multi_task: bool = False, grouped: bool = False,
               methods: list[str] | None = None) -> dict:
    """Returns the view's state as MLflow's UI keeps it: search facets (sorted by run name, so child runs
    are rows of their own) and UI state (headline columns first, their widths, the comparison charts);
    `grouped`: runs grouped by task, method and grid values, charts of the groups' means over seeds."""
    keys = headline_keys(languages, grid_keys, multi_task, methods)
    columns = [_column(kind, key) for kind, key in keys]
    group = {}
    if grouped:
        by = [*([{"mode": "tag", "groupByData": "task"}] if multi_task else []), {"mode": "param", "groupByData": "method"},
              *({"mode": "param", "groupByData": f"grid.{k}"} for k in grid_keys)]
        group = {"groupBy": {"groupByKeys": by, "aggregateFunction": "average"}, "useGroupedValuesInCharts": True}
    return {**group,
        "orderByKey": _column("tags", "mlflow.runName"), "orderByAsc": True,
        # grouped: the trials only (the parent run's params list every grid value: it would be a group of its own)
        "searchFilter": "tags.`subnet_ray.role` = 'trial'" if grouped else "",
        "selectedColumns": columns,
        "columnOrder": [NAME_COLUMN, *columns],  # MLflow lists metrics before params, each alphabetically
        "columnWidths": {c: min(max(90, 8 * len(key) + 28), 220) for c, (_, key) in zip(columns, keys)},
        "runsHiddenMode": "SHOW_ALL",  # charts plot every run, not MLflow's default first ten
        "compareRunCharts": _charts(grid_keys, grouped, methods),
        "compareRunSections": [{"uuid": SECTION, "name": "subnet-ray: methods and branches", "display": True,
                                "isReordered": False, "deleted": False, "isGenerated": False}],
        "isAccordionReordered": True,
        "hideEmptyCharts": True,
        "viewMaximized": False, "runListHidden": False,
    }


def view_tag(languages: list[str], grid_keys: list[str], multi_task: bool = False, key: str = VIEW_KEY,
             created_ms: int | None = None, now_ms: int | None = None, compress: bool | None = None,
             methods: list[str] | None = None) -> tuple[str, str]:
    """Returns (experiment tag key, value) of the saved view `key`: MLflow's saved-view envelope around view_state,
    its state deflated as MLflow's UI writes long ones ('deflate;' + base64 of zlib) when plain JSON would not fit
    an experiment tag (or as `compress` says)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    state = json.dumps(view_state(languages, grid_keys, multi_task, grouped=key == GROUPED_KEY, methods=methods),
                       separators=(",", ":"))

    def envelope(state: str) -> str:
        return json.dumps({"name": VIEW_NAMES.get(key, key), "createdAt": created_ms or now_ms, "updatedAt": now_ms, "state": state})

    value = envelope(state)
    if compress or (compress is None and len(value) > TAG_LIMIT):
        value = envelope(DEFLATE + base64.b64encode(zlib.compress(state.encode(), 9)).decode("ascii"))
    return TAG_PREFIX + key, value


def runs_url(base: str, experiment_id: str, chart: bool = False, key: str = VIEW_KEY) -> str:
    """Returns the URL of the experiment's runs page in model-training mode with the saved view `key` loaded
    (its chart view with `chart`); `base` is the MLflow UI's address, e.g. http://127.0.0.1:5000."""
    query = {"workflowType": WORKFLOW, "viewStateShareKey": key}
    if chart:
        query["compareRunsMode"] = "CHART"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


def sweep_views(tracking_uri: str) -> dict[str, str]:
    """Returns {sweep name: experiment id} of the live experiments in the store that carry the saved view."""
    import logging
    import os

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # a store's first opening logs its table creation at INFO

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.search_experiments(filter_string=f"tags.`{VIEW_TAG}` LIKE '%'", max_results=1000)
    return {e.name: e.experiment_id for e in sorted(found, key=lambda e: e.name)}
