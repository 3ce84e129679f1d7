"""What the report reads: finished runs from MLflow, kept as unit runs, grouped by dataset x
scheme x model x backend x training recipe with their class reports, and the reference
numbers they match.

A recipe is what a run trained with beyond its network and data set: the presettable
settings (experiments/presets.yaml), except `tta`, which evaluates the same weights, plus
the settings that change the data or the starting weights (max_images, image_size,
init_from, ...). They are read from the run's parameters; a setting the run did not log
(it predates the setting) counts as its built-in default, and a value that stands for the
network's own (dropout -1, dense_units 0, batchnorm default) as that value.

Where one dataset x scheme x model x backend has runs of several recipes (an ablation), one
recipe is its reference: the one whose runs carry the tag `galmorph.recipe_reference=true`
(benchmarks/ablation.py sets it on its baseline), else the `paper`, `recommended` or `none`
preset's, in that order, else the recipe with the fewest settings changed to reach all the
others. Each recipe is then named by its preset, or by what it changes from the reference
(the reference itself, without a preset, by what it changes from `recommended`)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from galmorph import presets
from galmorph.config import TrainConfig, from_param, settings_of
from galmorph.core import specs
from galmorph.core.errors import GalmorphError
from galmorph.core.paths import load_yaml
from galmorph.tracking.tags import GROUP, KIND, ROLE
from galmorph.workflows.multiseed import aggregate

SKIP_KINDS = ("multiseed", "sweep", "report", "prepare")


@dataclass
class Group:
    """The unit runs of one dataset x scheme x model x backend x class set x recipe;
    `reports[i]` is the classification_report.json of `runs[i]`, or None where the run has none."""

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
        text = f"{stem(self.dataset)}-{self.scheme}-{self.model}-{self.backend}"
        if not self.variant:
            return slug(text)
        digest = hashlib.sha256(repr(self.recipe).encode()).hexdigest()[:8]  # unique however long the name
        return slug(f"{text}-{self.variant}")[:100] + f"-{digest}"

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
        if tags.get(ROLE) in ("trial", "fold"):  # a study's trials: their test split waits for `retrain`
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
    """Group unit runs by dataset, scheme, model, backend, classes and recipe; read each run's
    class report (downloaded under `scratch`). Sorted by dataset, then flat, hierarchy, pair,
    node, then the reference recipe first."""
    groups: dict[tuple, Group] = {}
    for r in runs:
        tags = r.data.tags
        report = _class_report(client, r, scratch)
        names = tuple(report["class_names"]) if report else tuple(r.data.params.get("class_names", "").split(","))
        recipe = recipe_of(r.data.params, tags["model"])
        key = tuple(tags[k] for k in GROUP) + (names, recipe)
        if key not in groups:
            groups[key] = Group(tags["dataset"], tags["scheme"], tags["model"], tags["backend"],
                                kind_of(tags["scheme"], names), names, recipe=recipe)
        groups[key].runs.append(r)
        groups[key].reports.append(report)
    name_recipes(list(groups.values()))
    order = {"flat": 0, "hierarchy": 1, "pair": 2, "node": 3}
    return sorted(groups.values(), key=lambda g: (stem(g.dataset), order[g.kind], g.scheme, g.model, g.backend,
                                                  g.class_names, not g.reference, g.variant))


# ------------------------------------------------------------------------------ recipes
_SETTINGS = {s.name: s for s in settings_of(TrainConfig)}
# what the run trained with beyond network and data set (tta only evaluates the same weights) ...
RECIPE = [s.name for s in _SETTINGS.values() if s.presettable and s.name != "tta"]
# ... and what changes its data or starting weights
DATA = ["max_images", "image_size", "synthetic_n", "synthetic_noise", "init_from", "freeze"]
# runs whose recipes differ in these only share their test galaxies seed by seed
SPLIT = ["val_fraction", "test_fraction", *DATA]
REFERENCE_TAG = "galmorph.recipe_reference"


def _typed(setting, value):
    """config.from_param, keeping a value it cannot read as its text (a report reads any run)."""
    try:
        return from_param(setting, value)  # "30" and "30.0", "0.0002" and "2e-4" alike
    except (TypeError, ValueError, GalmorphError):
        return str(value)


def recipe_of(params: dict, model: str) -> tuple:
    """The recipe of a run of network `model` from its logged parameters (see the module docstring)."""
    values = {name: _typed(_SETTINGS[name], params.get(name, _SETTINGS[name].default)) for name in RECIPE + DATA}
    own = _sentinels(model)
    for name, sentinel in (("dropout", -1.0), ("dense_units", 0.0), ("batchnorm", "default")):
        if values.get(name) == sentinel and name in own:
            values[name] = own[name]
    if values.get("lr_schedule") == "constant":
        values["warmup_epochs"] = 0.0  # no warm-up without a schedule (training.lr_at)
    return tuple(sorted(values.items()))


def _sentinels(model: str) -> dict:
    try:
        return specs.sentinel_values(model)
    except GalmorphError:  # a network that architectures.yaml no longer has
        return {}


def _preset_recipe(name: str, model: str) -> tuple | None:
    try:
        given = presets.values(name, model)
    except GalmorphError:
        return None
    return recipe_of(given, model)  # the settings it leaves out: their built-in defaults


def _changes(recipe: tuple, reference: tuple) -> list[str]:
    ref = dict(reference)
    return [f"{k} {_show(v)}" for k, v in recipe if ref.get(k) != v]


def _show(value) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def same_split(a: Group, b: Group) -> bool:
    """Do the runs of `a` and `b` of one seed test on the same galaxies (same data settings and fractions)?"""
    ra, rb = dict(a.recipe), dict(b.recipe)
    return all(ra.get(k) == rb.get(k) for k in SPLIT)


def name_recipes(groups: list[Group]) -> None:
    """Set `variant` and `reference` of groups whose family has more than one recipe."""
    families: dict[tuple, list[Group]] = {}
    for g in groups:
        families.setdefault(g.family, []).append(g)
    for members in families.values():
        if len(members) < 2:
            continue
        model = members[0].model
        recipes = {preset: _preset_recipe(preset, model) for preset in presets.names()}
        named: dict[tuple, str] = {}
        for preset, recipe in recipes.items():
            named.setdefault(recipe, f"preset {preset}")
        by_recipe = {g.recipe: g for g in members}
        tagged = [g for g in members if any(r.data.tags.get(REFERENCE_TAG) == "true" for r in g.runs)]
        presets_ran = [by_recipe[recipes[p]] for p in ("paper", "recommended", "none") if recipes.get(p) in by_recipe]
        ref = (tagged or presets_ran or [min(members, key=lambda g: (
            sum(len(_changes(g.recipe, o.recipe)) for o in members), -len(set(g.seeds()))))])[0]
        for g in members:
            g.reference = g is ref
            changes = ", ".join(_changes(g.recipe, recipes["recommended"] if g is ref else ref.recipe))
            g.variant = named.get(g.recipe) or changes or "reference"


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
