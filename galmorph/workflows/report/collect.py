"""What the report reads: finished runs from MLflow, kept as unit runs, grouped by dataset x
scheme x model x backend x training recipe with their class reports, and the reference
numbers they match.

A recipe is the values of the presettable training settings (experiments/presets.yaml; not
`tta`, which evaluates the same weights), read from the run's parameters; a setting a run
did not log (it predates the setting) counts as its built-in default. Where one dataset x
scheme x model x backend has runs of several recipes (an ablation), one recipe is its
reference: the `paper` preset's where present, else the recipe with the fewest settings
changed to reach all the others (the baseline of a one-at-a-time ablation). Each group is
then named by its preset, or by what it changes from the reference."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from galmorph import presets
from galmorph.config import TrainConfig, settings_of
from galmorph.core.errors import GalmorphError
from galmorph.core.paths import load_yaml
from galmorph.tracking.tags import GROUP, KIND, ROLE
from galmorph.workflows.multiseed import aggregate

SKIP_KINDS = ("multiseed", "sweep", "report", "prepare")


@dataclass
class Group:
    """The unit runs of one dataset x scheme x model x backend x class set; `reports[i]` is
    the classification_report.json of `runs[i]`, or None where the run has none."""

    dataset: str
    scheme: str
    model: str
    backend: str
    kind: str  # flat, pair, node or hierarchy
    class_names: tuple[str, ...]
    runs: list = field(default_factory=list)
    reports: list = field(default_factory=list)
    recipe: tuple = ()  # ((setting, value), ...) sorted by setting
    variant: str = ""  # the recipe's name where its family has several (name_recipes), else ""
    reference: bool = False  # the recipe the family's others are compared with

    @property
    def family(self) -> tuple:
        """dataset, scheme, model, backend and classes: the groups an ablation compares."""
        return (self.dataset, self.scheme, self.model, self.backend, self.class_names)

    @property
    def label(self) -> str:
        return f"{self.model} {self.backend}" + (f" [{self.variant}]" if self.variant else "")

    @property
    def slug(self) -> str:
        """A file-name-safe name, unique per group of one report."""
        return slug(f"{stem(self.dataset)}-{self.scheme}-{self.model}-{self.backend}" +
                    (f"-{self.variant}" if self.variant else ""))

    def metrics(self) -> dict:
        """Mean and std over the runs of every metric (`multiseed.aggregate`)."""
        return aggregate([r.data.metrics for r in self.runs])

    def seeds(self) -> list[str]:
        return [r.data.params.get("seed", "?") for r in self.runs]


# ------------------------------------------------------------------------------ runs
def search(client, experiments: list[str], filter_string: str = "") -> list:
    """Finished runs of the named experiments matching `filter_string`, oldest first.

    Raises GalmorphError for an unknown experiment or a filter MLflow rejects."""
    ids = []
    for name in experiments:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            known = ", ".join(e.name for e in client.search_experiments()) or "none"
            raise GalmorphError(f"no MLflow experiment named {name!r} (experiments: {known}); check --experiments")
        ids.append(exp.experiment_id)
    query = "attributes.status = 'FINISHED'" + (f" and {filter_string}" if filter_string.strip() else "")
    from mlflow.exceptions import MlflowException

    runs, token = [], None
    while True:
        try:
            page = client.search_runs(ids, query, max_results=1000, page_token=token,
                                      order_by=["attributes.start_time ASC"])
        except MlflowException as exc:
            if not filter_string.strip():
                raise
            raise GalmorphError(f"bad run filter {filter_string!r} ({str(exc).splitlines()[0]}); "
                                "use MLflow's syntax, e.g. tags.dataset = 'synthetic'") from None
        runs += list(page)
        token = page.token
        if not token:
            return runs


def units(runs, include_nodes: bool = False) -> list:
    """Runs that are one trained classifier each, with test accuracy and the group tags."""
    out = []
    for r in runs:
        tags = r.data.tags
        if tags.get(KIND) in SKIP_KINDS or "test_accuracy" not in r.data.metrics:
            continue
        if not all(k in tags for k in GROUP):
            continue
        if tags.get(ROLE) == "hierarchy_node" and not include_nodes:
            continue
        out.append(r)
    return out


def kind_of(scheme: str, class_names) -> str:
    """flat, pair (two plain classes), node (a hierarchy's binary split) or hierarchy."""
    if scheme.startswith("hierarchy:"):
        return "hierarchy"
    if ":" in scheme:
        return "pair" if len(class_names) == 2 and not any("/" in c for c in class_names) else "node"
    return "flat"


def group(runs, client, scratch: Path) -> list[Group]:
    """Group unit runs by dataset, scheme, model and backend; read each run's class report
    (downloaded under `scratch`). Sorted by dataset, then flat, hierarchy, pair, node."""
    groups: dict[tuple, Group] = {}
    for r in runs:
        tags = r.data.tags
        report = _class_report(client, r, scratch)
        names = tuple(report["class_names"]) if report else tuple(r.data.params.get("class_names", "").split(","))
        recipe = recipe_of(r.data.params)
        key = tuple(tags[k] for k in GROUP) + (names, recipe)
        if key not in groups:
            groups[key] = Group(tags["dataset"], tags["scheme"], tags["model"], tags["backend"],
                                kind_of(tags["scheme"], names), names, recipe=recipe)
        groups[key].runs.append(r)
        groups[key].reports.append(report)
    name_recipes(list(groups.values()))
    order = {"flat": 0, "hierarchy": 1, "pair": 2, "node": 3}
    return sorted(groups.values(), key=lambda g: (stem(g.dataset), order[g.kind], g.scheme, g.model, g.backend,
                                                  not g.reference, g.variant))


# ------------------------------------------------------------------------------ recipes
RECIPE = {s.name: s for s in settings_of(TrainConfig) if s.presettable and s.name != "tta"}


def _typed(setting, value):
    if setting.type is bool:
        return str(value).strip().lower() in ("true", "1", "yes")
    if setting.type in (int, float):
        try:
            return float(value)  # "30" and "30.0", "0.0002" and "2e-4" alike
        except (TypeError, ValueError):
            return str(value)
    return str(value)


def recipe_of(params: dict) -> tuple:
    """The run's recipe from its logged parameters (missing ones: the built-in default)."""
    return tuple(sorted((name, _typed(s, params.get(name, s.default))) for name, s in RECIPE.items()))


def _preset_recipe(name: str, model: str) -> tuple | None:
    try:
        given = presets.values(name, model)
    except GalmorphError:
        return None
    return recipe_of({**{n: s.default for n, s in RECIPE.items()}, **given})


def _changes(recipe: tuple, reference: tuple) -> list[str]:
    ref = dict(reference)
    return [f"{k} {_show(v)}" for k, v in recipe if ref.get(k) != v]


def _show(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def name_recipes(groups: list[Group]) -> None:
    """Set `variant` and `reference` of groups whose family has more than one recipe."""
    families: dict[tuple, list[Group]] = {}
    for g in groups:
        families.setdefault(g.family, []).append(g)
    for members in families.values():
        if len(members) < 2:
            continue
        model = members[0].model
        named = {}
        for preset in presets.names():
            recipe = _preset_recipe(preset, model)
            named.setdefault(recipe, f"preset {preset}")
        paper = _preset_recipe("paper", model)
        ref = next((g for g in members if g.recipe == paper), None) or min(
            members, key=lambda g: (sum(len(_changes(g.recipe, o.recipe)) for o in members), -len(g.runs)))
        for g in members:
            g.reference = g is ref
            g.variant = named.get(g.recipe) or ", ".join(_changes(g.recipe, ref.recipe)) or "reference"


def _class_report(client, run, scratch: Path) -> dict | None:
    try:
        path = client.download_artifacts(run.info.run_id, "classification_report.json", str(scratch / run.info.run_id))
        return json.loads(Path(path).read_text())
    except Exception:  # a run without the artifact still has its metrics
        return None


def copy_explain(client, run, dest: Path) -> list[Path]:
    """Copy the feature-map and Grad-CAM figures `run` logged under explain/ into `dest`;
    the copies, none if the run has no such artifacts."""
    try:
        names = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "explain")}
    except Exception:
        return []
    wanted = [n for n in ("feature_maps_conv1.png", "grad_cam.png") if n in names]
    out = []
    for name in wanted:
        with tempfile.TemporaryDirectory() as tmp:
            src = client.download_artifacts(run.info.run_id, f"explain/{name}", tmp)
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / name)
            out.append(dest / name)
    return out


# ------------------------------------------------------------------------------ references
def references() -> dict:
    """experiments/paper.yaml: the published numbers, their aliases, sources and timings."""
    return load_yaml("paper.yaml")


def matches(refs: dict, source: str, g: Group) -> list[dict]:
    """Reference results of `source` (paper, phys449) for the kind, classes and model of `g`.

    A result with `classes` matches that class set; one without (measured on other data,
    like the paper's Galaxy Zoo check) matches groups with `n_classes` classes on a data set
    named by one of its `datasets` patterns."""
    aliases = refs.get("aliases") or {}
    canon = lambda names: frozenset(str(aliases.get(n, n)) for n in names)  # noqa: E731
    mine = canon(g.class_names)
    out = []
    for ref in refs.get(source) or []:
        kinds = ref.get("kind")
        if g.kind not in (kinds if isinstance(kinds, list) else [kinds]):
            continue
        if ref.get("model", "any") not in ("any", g.model):
            continue
        if ref.get("classes") is not None:
            if canon(ref["classes"]) == mine:
                out.append(ref)
        elif ref.get("n_classes") == len(g.class_names) and any(
                fnmatchcase(stem(g.dataset), str(pattern)) for pattern in ref.get("datasets") or []):
            out.append(ref)
    return out


def source_name(refs: dict, ref: dict) -> str:
    """The short name of where `ref` was published (its `source` key in `sources`)."""
    src = (refs.get("sources") or {}).get(ref.get("source"), {})
    return str(src.get("short") or ref.get("source") or "?")


# ------------------------------------------------------------------------------ names
def stem(dataset: str) -> str:
    """A dataset's short name: the file stem of a path or HDF5 file, else the name itself."""
    return Path(dataset).stem if ("/" in dataset or dataset.endswith((".h5", ".hdf5"))) else dataset


def slug(text: str) -> str:
    """`text` as a file name: runs of other characters than [A-Za-z0-9._-] become `_`; at most 120."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:120]
