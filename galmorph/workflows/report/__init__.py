"""The reproduction report: finished MLflow runs, grouped and set next to the published numbers.

`run(ReportConfig(...))` reads the runs of some experiments (optionally an MLflow filter,
e.g. `tags.dataset = 'synthetic'`), keeps the unit runs (single trainings, the children of
multi-seed groups, hierarchical classifiers; not the multi-seed/sweep parents, reports or
data preparations, and hierarchy nodes only on request), groups them by dataset x scheme x
model x backend and writes, under `output/`:

- `report.md` and `report.html` (self-contained: figures embedded), written last and
  atomically, so a report never points at a missing figure;
- `figures/`: mean confusion matrix per group, learning curves of each dataset x scheme
  side by side, timing per backend, and saliency figures copied from runs that have them.

Sections: test accuracy (mean and std over seeds, `galmorph.workflows.multiseed.aggregate`) next to
the paper's and the PHYS449 reproduction's numbers (experiments/paper.yaml); per-class
recall; confusion matrices; learning curves; time per epoch per backend; feature maps and
Grad-CAM; the reference numbers with their sources; the runs used. Everything is logged as
artifacts (under `report/`) of a run tagged `galmorph.kind=report`.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from galmorph import __version__, tracking
from galmorph.config import option
from galmorph.core.errors import GalmorphError
from galmorph.core.io import atomic_write
from galmorph.core.paths import load_yaml
from galmorph.tracking import figures as plots
from galmorph.tracking.tags import GROUP, KIND, ROLE
from galmorph.workflows.multiseed import aggregate

SKIP_KINDS = ("multiseed", "sweep", "report", "prepare")


@dataclass
class ReportConfig:
    """Settings of `galmorph report` (CLI flags and MLproject `report` parameters)."""

    experiments: str = option("galmorph", "comma-separated MLflow experiment names")
    filter: str = option("", "MLflow filter on the runs, e.g. \"tags.dataset = 'synthetic'\"")
    output: str = option("outputs/report", "folder for report.md, report.html and figures")
    log_experiment: str = option("galmorph-reports", "experiment of the report's own run outside `mlflow run`",
                                 mlproject=False)
    title: str = option("Reproducing Cavanagh, Bekki & Groves 2021", "report title", mlproject=False)
    include_nodes: bool = option(False, "also list the binary node networks of hierarchical classifiers as rows")

    def experiment_names(self) -> list[str]:
        return [e.strip() for e in self.experiments.split(",") if e.strip()]


@dataclass
class Group:
    dataset: str
    scheme: str
    model: str
    backend: str
    kind: str  # flat, pair, node or hierarchy
    class_names: tuple[str, ...]
    runs: list = field(default_factory=list)
    reports: list = field(default_factory=list)  # classification_report.json of each run

    @property
    def label(self) -> str:
        return f"{self.model} {self.backend}"

    @property
    def slug(self) -> str:
        return _slug(f"{_stem(self.dataset)}-{self.scheme}-{self.model}-{self.backend}")

    def metrics(self) -> dict:
        return aggregate([r.data.metrics for r in self.runs])

    def seeds(self) -> list[str]:
        return [r.data.params.get("seed", "?") for r in self.runs]


# ------------------------------------------------------------------------------ runs
def search(client, experiments: list[str], filter_string: str = "") -> list:
    """Finished runs of the named experiments matching `filter_string`, oldest first."""
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
    if scheme.startswith("hierarchy:"):
        return "hierarchy"
    if ":" in scheme:
        return "pair" if len(class_names) == 2 and not any("/" in c for c in class_names) else "node"
    return "flat"


def group(runs, client, scratch: Path) -> list[Group]:
    """Group unit runs by dataset, scheme, model and backend; read each run's class report."""
    groups: dict[tuple, Group] = {}
    for r in runs:
        tags = r.data.tags
        report = _class_report(client, r, scratch)
        names = tuple(report["class_names"]) if report else tuple(r.data.params.get("class_names", "").split(","))
        key = tuple(tags[k] for k in GROUP) + (names,)
        if key not in groups:
            groups[key] = Group(tags["dataset"], tags["scheme"], tags["model"], tags["backend"],
                                kind_of(tags["scheme"], names), names)
        groups[key].runs.append(r)
        groups[key].reports.append(report)
    order = {"flat": 0, "hierarchy": 1, "pair": 2, "node": 3}
    return sorted(groups.values(), key=lambda g: (_stem(g.dataset), order[g.kind], g.scheme, g.model, g.backend))


def _class_report(client, run, scratch: Path) -> dict | None:
    try:
        path = client.download_artifacts(run.info.run_id, "classification_report.json", str(scratch / run.info.run_id))
        return json.loads(Path(path).read_text())
    except Exception:  # a run without the artifact still has its metrics
        return None


# ------------------------------------------------------------------------------ references
def references() -> dict:
    return load_yaml("paper.yaml")


def matches(refs: dict, source: str, g: Group) -> list[dict]:
    """Reference results of `source` (paper, phys449) for the kind, classes and model of `g`."""
    aliases = refs.get("aliases") or {}
    canon = lambda names: frozenset(str(aliases.get(n, n)) for n in names)  # noqa: E731
    mine = canon(g.class_names)
    out = []
    for ref in refs.get(source) or []:
        if ref.get("classes") is None or ref.get("kind") != g.kind:
            continue
        if canon(ref["classes"]) == mine and ref.get("model", "any") in ("any", g.model):
            out.append(ref)
    return out


def _ref_text(ref: dict) -> str:
    rel = "> " if ref.get("relation") == ">" else ""
    return f"{rel}{100 * ref['value']:.1f} % ({ref['label']}; {ref['dataset']})"


# ------------------------------------------------------------------------------ figures
def mean_confusion(g: Group, path: Path) -> Path | None:
    mats = [np.asarray(r["confusion_matrix_normalised"], float) for r in g.reports if r]
    if not mats:
        return None
    report = {"class_names": list(g.class_names), "confusion_matrix_normalised": np.mean(mats, axis=0).tolist()}
    title = f"{g.label}, {_stem(g.dataset)} {g.scheme}: recall, mean of {len(mats)}"
    return plots.confusion_matrix(report, path, normalised=True, title=title)


def learning_curves(groups: list[Group], client, path: Path, title: str) -> Path | None:
    """Validation (solid) and training (dashed) loss and accuracy per epoch of every run of
    `groups` (one colour per model x backend), side by side."""

    plt = plots.pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    drawn = False
    for ci, g in enumerate(groups):
        colour = f"C{ci % 10}"
        for ri, r in enumerate(g.runs):
            hist = {k: client.get_metric_history(r.info.run_id, k)
                    for k in ("train_loss", "val_loss", "train_accuracy", "val_accuracy")}
            if not hist["val_loss"]:
                continue
            drawn = True
            for ax, key in ((a1, "loss"), (a2, "accuracy")):
                for split, style in (("val", "-"), ("train", "--")):
                    pts = sorted((m.step + 1, m.value) for m in hist[f"{split}_{key}"])
                    label = f"{g.label} ({split})" if ri == 0 else None
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=colour, alpha=0.75,
                            lw=1.2, marker="o" if split == "val" else None, ms=3, label=label)
    if not drawn:
        plt.close(fig)
        return None
    a1.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    a2.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    a2.legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    return plots.save(fig, path)


def timing_figure(rows: list[dict], path: Path) -> Path | None:
    rows = [r for r in rows if np.isfinite(r.get("img_s", np.nan))]
    if not rows:
        return None
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.5 * len(rows) + 1.5), 3.8))
    colours = {"keras": "C0", "torch": "C1"}
    labels = [f"{r['model']} {r['backend']}\n{r['dataset']}\n{r['scheme']}\n{r['input']}" for r in rows]
    ax.bar(range(len(rows)), [r["img_s"] for r in rows], yerr=[r["img_s_std"] for r in rows],
           color=[colours.get(r["backend"], "C2") for r in rows], capsize=3)
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("training images / s (steady epochs)")
    ax.set_title("training throughput per backend")
    return plots.save(fig, path)


# ------------------------------------------------------------------------------ build
def build(groups: list[Group], client, fig_dir: Path, cfg: ReportConfig, n_runs: int) -> list[tuple]:
    """The report as blocks: (h1|h2|h3|p, text), (table, header, rows), (images, [(path, caption)])."""
    refs = references()
    fig_dir.mkdir(parents=True, exist_ok=True)
    blocks: list[tuple] = [("h1", cfg.title)]

    blocks.append(("p", f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by galmorph {__version__} from "
                        f"{n_runs} finished runs ({len(groups)} groups) of experiment(s) "
                        f"`{', '.join(cfg.experiment_names())}`" + (f" with filter `{cfg.filter}`" if cfg.filter else "") +
                        f", tracking store `{tracking.redact(_tracking_uri())}`. Mean +- sample standard deviation "
                        "over the runs (seeds) of each group. Reference numbers come from `experiments/paper.yaml`; "
                        "each names the data set it was measured on: a number measured on the Nair & Abraham "
                        "sample compares with a run on another data set only loosely."))
    if not groups:
        blocks.append(("p", "No finished training runs matched."))
        return blocks

    # -- accuracy
    blocks.append(("h2", "Test accuracy"))
    rows = []
    for g in groups:
        m = g.metrics()
        rows.append([_stem(g.dataset), g.scheme, g.kind, g.model, g.backend, f"{len(g.runs)} ({','.join(g.seeds())})",
                     _pm(m, "test_accuracy"), _pm(m, "test_balanced_accuracy"), _pm(m, "test_macro_f1"),
                     "; ".join(_ref_text(r) for r in matches(refs, "paper", g)) or "-",
                     "; ".join(_ref_text(r) for r in matches(refs, "phys449", g)) or "-"])
    blocks.append(("table", ["dataset", "scheme", "kind", "model", "backend", "runs (seeds)", "test accuracy",
                             "balanced accuracy", "macro F1", "paper", "PHYS449"], rows))
    hier = [g for g in groups if g.kind == "hierarchy"]
    if hier:
        blocks.append(("p", "Hierarchical classifiers: the product of the binary node networks' probabilities "
                            "along each class's path (`galmorph.workflows.hierarchy`); greedy = following each node's "
                            "arg-max: " + "; ".join(f"{g.label} {_stem(g.dataset)} {g.scheme}: greedy "
                                                   f"{_pm(g.metrics(), 'test_greedy_accuracy')}" for g in hier) + "."))

    # -- per-class recall, one table per dataset x class set
    blocks.append(("h2", "Per-class recall"))
    by_classes: dict[tuple, list[Group]] = {}
    for g in groups:
        by_classes.setdefault((_stem(g.dataset), g.class_names), []).append(g)
    for (ds, names), gs in by_classes.items():
        rows = []
        for g in gs:
            recalls = [{n: r["per_class"][n]["recall"] for n in names} for r in g.reports if r]
            agg = aggregate(recalls) if recalls else {}
            rows.append([g.scheme, g.label, *[_pm(agg, n) for n in names]])
        blocks.append(("h3", f"{ds}: {', '.join(names)}"))
        blocks.append(("table", ["scheme", "network", *names], rows))

    # -- confusion matrices
    blocks.append(("h2", "Confusion matrices"))
    blocks.append(("p", "Row-normalised (rows: true class), averaged over the runs of each group."))
    for (ds, names), gs in by_classes.items():
        images = []
        for g in gs:
            p = mean_confusion(g, fig_dir / f"cm-{g.slug}.png")
            if p:
                images.append((p, f"{g.label}, {g.scheme}, {len(g.runs)} runs"))
        if images:
            blocks.append(("h3", f"{ds}: {', '.join(names)}"))
            blocks.append(("images", images))

    # -- learning curves
    blocks.append(("h2", "Learning curves"))
    by_scheme: dict[tuple, list[Group]] = {}
    for g in groups:
        if g.kind != "hierarchy":
            by_scheme.setdefault((_stem(g.dataset), g.scheme), []).append(g)
    for (ds, scheme), gs in by_scheme.items():
        p = learning_curves(gs, client, fig_dir / f"curves-{_slug(ds + '-' + scheme)}.png", f"{ds}, {scheme}")
        if p:
            blocks.append(("images", [(p, f"{ds}, {scheme}: every run; solid validation, dashed training")]))

    # -- timing
    blocks.append(("h2", "Time per epoch per backend"))
    timing_rows, table = [], []
    for g in groups:
        if g.kind == "hierarchy":
            continue
        m = g.metrics()
        params = g.runs[0].data.params
        row = {"model": g.model, "backend": g.backend, "dataset": _stem(g.dataset), "scheme": g.scheme,
               "input": params.get("input_shape", "?"), "img_s": m.get("steady_train_images_per_s_mean", np.nan),
               "img_s_std": m.get("steady_train_images_per_s_std", 0.0)}
        timing_rows.append(row)
        table.append([_stem(g.dataset), g.scheme, g.model, g.backend, row["input"], params.get("n_train", "?"),
                      f"{params.get('device', '?')}: {params.get('device_name', '?')}", params.get("cpu_threads", "?"),
                      _pm(m, "first_epoch_time_s", 1), _pm(m, "steady_epoch_time_s", 2),
                      _pm(m, "steady_train_images_per_s", 0), _pm(m, "test_inference_images_per_s", 0)])
    blocks.append(("table", ["dataset", "scheme", "model", "backend", "input", "train images", "device", "threads",
                             "first epoch (s)", "steady epoch (s)", "train img/s", "inference img/s"], table))
    blocks.append(("p", "The first epoch includes graph building and warm-up; steady = the mean of the later epochs "
                        "(training part only, validation excluded). " + "; ".join(
                            f"{t['label']}: {t['value_s_per_epoch']} s per epoch ({t['note']})"
                            for t in refs.get("timing") or []) + "."))
    p = timing_figure(timing_rows, fig_dir / "timing.png")
    if p:
        blocks.append(("images", [(p, "training throughput (mean +- std over runs)")]))

    # -- saliency
    shown = []
    for g in groups:
        for r in g.runs:
            copied = _copy_explain(client, r, fig_dir / f"explain-{g.slug}")
            if copied:
                shown.append((g, copied))
                break
    if shown:
        blocks.append(("h2", "Feature maps and Grad-CAM"))
        blocks.append(("p", "First-convolution feature maps and Grad-CAM (last convolution, predicted class) of a few "
                            "test galaxies per class, from one run of each group (`galmorph.workflows.explain`)."))
        for g, paths in shown:
            blocks.append(("h3", f"{g.label}, {_stem(g.dataset)} {g.scheme}"))
            blocks.append(("images", [(p, p.stem.replace("_", " ")) for p in paths]))

    # -- references
    blocks.append(("h2", "Reference numbers"))
    rows = []
    for source in ("paper", "phys449"):
        for ref in refs.get(source) or []:
            rows.append([source, ref["label"], f"{'> ' if ref.get('relation') == '>' else ''}{100 * ref['value']:.1f} %",
                         str(ref.get("dataset", "")), ref.get("note", "")])
    blocks.append(("table", ["source", "result", "test accuracy", "measured on", "note"], rows))
    blocks.append(("p", " ".join(f"**{k}**: {' '.join(str(v).split())}." for k, v in (refs.get("sources") or {}).items())))

    # -- runs
    blocks.append(("h2", "Runs"))
    blocks.append(("table", ["dataset", "scheme", "network", "run ids"],
                   [[_stem(g.dataset), g.scheme, g.label, " ".join(r.info.run_id[:8] for r in g.runs)] for g in groups]))
    return blocks


def _copy_explain(client, run, dest: Path) -> list[Path]:
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


# ------------------------------------------------------------------------------ render
def render_markdown(blocks, root: Path) -> str:
    out = []
    for b in blocks:
        if b[0] in ("h1", "h2", "h3"):
            out.append("#" * int(b[0][1]) + " " + b[1])
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "table":
            out.append(_md_table(b[1], b[2]))
        elif b[0] == "images":
            out.append(" ".join(f"![{cap}]({Path(p).relative_to(root).as_posix()})" for p, cap in b[1]))
    return "\n\n".join(out) + "\n"


def _md_table(header, rows) -> str:
    esc = lambda c: str(c).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines)


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)


def render_html(blocks, title: str) -> str:
    body = []
    for b in blocks:
        if b[0] in ("h1", "h2", "h3"):
            body.append(f"<{b[0]}>{_inline(b[1])}</{b[0]}>")
        elif b[0] == "p":
            body.append(f"<p>{_inline(b[1])}</p>")
        elif b[0] == "table":
            head = "".join(f"<th>{_inline(str(c))}</th>" for c in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b[0] == "images":
            figs = []
            for p, cap in b[1]:
                data = base64.b64encode(Path(p).read_bytes()).decode()
                figs.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(cap)}">'
                            f"<figcaption>{_inline(cap)}</figcaption></figure>")
            body.append('<div class="figs">' + "".join(figs) + "</div>")
    style = ("body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px}"
             "th{background:#f3f3f3}.figs{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}"
             "img{max-width:100%}figcaption{font-size:12px;color:#555}code{background:#f3f3f3;padding:0 3px}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write(blocks, out: Path, title: str) -> list[Path]:
    """report.md and report.html in `out` (figures must already be under it)."""

    md = atomic_write(out / "report.md", lambda fh: fh.write(render_markdown(blocks, out)))
    page = atomic_write(out / "report.html", lambda fh: fh.write(render_html(blocks, title)))
    return [md, page]


# ------------------------------------------------------------------------------ entry
def run(cfg: ReportConfig) -> list[Path]:
    """Build the report from MLflow, save it in cfg.output and log it to a `report` run;
    return the paths of report.md, report.html and the figures folder."""
    import mlflow

    client = mlflow.MlflowClient()
    runs = search(client, cfg.experiment_names(), cfg.filter)
    chosen = units(runs, cfg.include_nodes)
    out = Path(cfg.output).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GalmorphError(f"cannot create the report folder {out} ({exc.strerror}); pass a writable --output") from None
    fig_dir = out / "figures"
    tracking.configure(cfg.log_experiment)
    with tracking.run("report", tags={KIND: "report"}, system_metrics=False):
        tracking.log_params({"experiments": ",".join(cfg.experiment_names()), "filter": cfg.filter, "output": str(out),
                             "n_runs": len(chosen), "include_nodes": cfg.include_nodes})
        with tempfile.TemporaryDirectory(prefix="galmorph-report-") as scratch:
            groups = group(chosen, client, Path(scratch))
            if fig_dir.exists():
                shutil.rmtree(fig_dir)  # figures of an earlier report would linger otherwise
            blocks = build(groups, client, fig_dir, cfg, len(chosen))
        paths = write(blocks, out, cfg.title)
        mlflow.log_metrics({"n_runs": float(len(chosen)), "n_groups": float(len(groups))})
        mlflow.log_artifacts(str(out), "report")
    return paths + [fig_dir]


def _pm(m: dict, key: str, digits: int | None = None) -> str:
    """'mean +- std' of aggregate key `key`: a percentage (fractions such as accuracies) when
    `digits` is None, else a plain number with that many decimals."""
    if f"{key}_mean" not in m:
        return "-"
    mean, std = m[f"{key}_mean"], m[f"{key}_std"]
    single = m.get("n_seeds", 2) < 2  # no spread to show
    if digits is None:
        return f"{100 * mean:.1f} %" if single else f"{100 * mean:.1f} +- {100 * std:.1f} %"
    return f"{mean:.{digits}f}" if single else f"{mean:.{digits}f} +- {std:.{digits}f}"


def _stem(dataset: str) -> str:
    return Path(dataset).stem if ("/" in dataset or dataset.endswith((".h5", ".hdf5"))) else dataset


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:120]


def _tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()
