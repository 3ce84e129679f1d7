"""Groups of runs turned into the report's content: a list of blocks, one function per
section, drawing the figures into the figures folder on the way.

Blocks are renderer-neutral tuples: `(h1|h2|h3|p, text)`, `("table", header, rows)` and
`("images", [(path, caption), ...])`. Text is plain, except for inline code in backticks and
`**bold**`; the renderers escape everything else.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from galmorph import __version__, tracking
from galmorph.core import calibration, stats
from galmorph.tracking import figures as plots
from galmorph.workflows.multiseed import aggregate
from galmorph.workflows.report import collect
from galmorph.workflows.report.collect import Group, copy_explain, matches, references, slug, source_name, stem
from galmorph.workflows.report.config import ReportConfig


def build(groups: list[Group], client, fig_dir: Path, cfg: ReportConfig, n_runs: int) -> list[tuple]:
    """The report as blocks (see the module docstring); its figures are written under `fig_dir`."""
    refs = references()
    fig_dir.mkdir(parents=True, exist_ok=True)
    blocks: list[tuple] = [("h1", cfg.title), ("p", _summary(groups, cfg, n_runs))]
    if not groups:
        blocks.append(("p", "No finished training runs matched."))
        return blocks
    by_classes: dict[tuple, list[Group]] = {}
    for g in groups:
        by_classes.setdefault((stem(g.dataset), g.class_names), []).append(g)
    blocks += accuracy_section(groups, refs)
    blocks += ablation_section(groups)
    blocks += recall_section(by_classes)
    blocks += confusion_section(by_classes, fig_dir)
    blocks += curves_section(groups, client, fig_dir)
    blocks += timing_section(groups, refs, fig_dir)
    blocks += saliency_section(groups, client, fig_dir)
    blocks += references_section(refs)
    blocks += runs_section(groups)
    return blocks


def _summary(groups: list[Group], cfg: ReportConfig, n_runs: int) -> str:
    return (f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by galmorph {__version__} from "
            f"{n_runs} finished runs ({len(groups)} groups) of experiment(s) "
            f"`{', '.join(cfg.experiment_names())}`" + (f" with filter `{cfg.filter}`" if cfg.filter else "") +
            f", tracking store `{tracking.redact(_tracking_uri())}`. Mean +- sample standard deviation "
            "over the runs (seeds) of each group. Reference numbers come from `experiments/paper.yaml`; "
            "each names the data set it was measured on: a number measured on the Nair & Abraham "
            "sample compares with a run on another data set only loosely.")


# ------------------------------------------------------------------------------ sections
def accuracy_section(groups: list[Group], refs: dict) -> list[tuple]:
    """Test accuracy with its expected calibration error (temperature-scaled, and as trained;
    galmorph.core.calibration), balanced accuracy and macro F1 per group next to the matching
    references."""
    recipes = any(g.variant for g in groups)
    rows = []
    for g in groups:
        m = g.metrics()
        rows.append([stem(g.dataset), g.scheme, g.kind, g.model, g.backend, *([g.variant or "-"] if recipes else []),
                     f"{len(g.runs)} ({','.join(g.seeds())})",
                     _pm(m, "test_accuracy"), _pm(m, "test_ece", 3), _pm(m, "test_ece_uncalibrated", 3),
                     _pm(m, "test_balanced_accuracy"), _pm(m, "test_macro_f1"),
                     "; ".join(_ref_text(refs, r) for r in matches(refs, "paper", g)) or "-",
                     "; ".join(_ref_text(refs, r) for r in matches(refs, "phys449", g)) or "-"])
    blocks: list[tuple] = [("h2", "Test accuracy"),
                           ("table", ["dataset", "scheme", "kind", "model", "backend", *(["recipe"] if recipes else []),
                                      "runs (seeds)", "test accuracy",
                                      "ECE", "ECE uncalibrated", "balanced accuracy", "macro F1", "paper", "PHYS449"],
                            rows),
                           ("p", f"ECE: expected calibration error of the test probabilities in "
                                 f"{calibration.ECE_BINS} equal-width confidence bins, after temperature scaling "
                                 "(one temperature fitted on the validation split) and as the network gives them "
                                 "(uncalibrated); `-` for runs from before calibration was logged.")]
    hier = [g for g in groups if g.kind == "hierarchy"]
    if hier:
        blocks.append(("p", "Hierarchical classifiers: the product of the binary node networks' probabilities "
                            "along each class's path (`galmorph.workflows.hierarchy`); greedy = following each node's "
                            "arg-max: " + "; ".join(f"{g.label} {stem(g.dataset)} {g.scheme}: greedy "
                                                   f"{_pm(g.metrics(), 'test_greedy_accuracy')}" for g in hier) + "."))
    return blocks


ABLATION_METRICS = (("test_accuracy", "test accuracy"), ("test_balanced_accuracy", "balanced accuracy"),
                    ("test_tta_accuracy", "accuracy, 40 views"), ("test_tta_balanced_accuracy", "balanced, 40 views"))


def ablation_section(groups: list[Group]) -> list[tuple]:
    """Where one dataset x scheme x network x backend has runs of several recipes: a table of
    each recipe (named by its preset or by what it changes from the reference recipe,
    collect.name_recipes) with mean +- std over seeds and its gain over the reference, in
    points: paired by seed where both test on the same galaxies (galmorph.core.stats), else
    the difference of the means. A seed run more than once counts once, with its mean."""
    families: dict[tuple, list[Group]] = {}
    for g in groups:
        families.setdefault(g.family, []).append(g)
    blocks: list[tuple] = []
    for members in families.values():
        if len(members) < 2:
            continue
        ref = next(g for g in members if g.reference)
        rows = []
        for g in sorted(members, key=lambda g: not g.reference):
            cells = []
            for key, _ in ABLATION_METRICS:
                values = _by_seed(g, key).values()
                cells.append(_pm(aggregate([{key: v} for v in values]), key) if values else "-")
            gains = [_gain(ref, g, key) for key in ("test_accuracy", "test_balanced_accuracy")]
            seeds = sorted(_by_seed(g, "test_accuracy"), key=_seed_order)
            rows.append([g.variant + (" (reference)" if g.reference and g.variant != "reference" else ""),
                         f"{len(seeds)} ({','.join(seeds)})", *cells, *gains])
        g0 = members[0]
        blocks += [("h3", f"{stem(g0.dataset)} {g0.scheme}: {g0.model} {g0.backend}"),
                   ("table", ["recipe", "seeds", *[label for _, label in ABLATION_METRICS],
                              "gain in accuracy (points)", "gain in balanced accuracy (points)"], rows)]
        tta = [stats.paired_gain(_by_seed(ref, plain), _by_seed(ref, f"test_tta_{plain[5:]}"))
               for plain in ("test_accuracy", "test_balanced_accuracy")]
        if all(tta):
            blocks.append(("p", f"40 views against one, on the reference's own weights: {tta[0].text()} points of "
                                f"accuracy, {tta[1].text()} of balanced accuracy."))
    if not blocks:
        return []
    return [("h2", "Recipe ablation"),
            ("p", "Runs of one dataset, scheme, network and backend with different training recipes (the "
                  "presettable settings of docs/parameters.md but `tta`, and the settings that change the data). "
                  "Each recipe is named by its preset or by the settings it changes from the reference: the "
                  "recipe tagged galmorph.recipe_reference (benchmarks/ablation.py's baseline), else the "
                  "`paper`, `recommended` or `none` preset where it ran, else the recipe the others each "
                  "change least. Gain: the mean over the seeds both recipes ran of the per-seed difference "
                  "+- its standard error (a seed fixes the split, the augmentation order and the initial "
                  "weights); it holds where it exceeds two standard errors over at least 3 seeds. Recipes "
                  "that test on other galaxies (other split fractions or data settings) show the difference "
                  "of their means instead, marked unpaired. 40 views: test-time augmentation, the mean "
                  "probability over the 40 views of each test galaxy (`--tta`).")] + blocks


def _gain(ref: Group, g: Group, key: str) -> str:
    if g is ref:
        return "-"
    if collect.same_split(ref, g):
        gain = stats.paired_gain(_by_seed(ref, key), _by_seed(g, key))
    else:
        gain = stats.unpaired_gain(list(_by_seed(ref, key).values()), list(_by_seed(g, key).values()))
    return gain.text() if gain else "-"


def _by_seed(g: Group, key: str) -> dict:
    """{seed: value of metric `key`} of `g`'s runs; the mean where a seed ran more than once."""
    values: dict[str, list[float]] = {}
    for r in g.runs:
        if key in r.data.metrics:
            values.setdefault(r.data.params.get("seed", "?"), []).append(r.data.metrics[key])
    return {seed: float(np.mean(v)) for seed, v in values.items()}


def _seed_order(seed: str):
    return (0, int(seed)) if seed.isdigit() else (1, seed)


def recall_section(by_classes: dict[tuple, list[Group]]) -> list[tuple]:
    """One recall table per dataset x class set, a row per group."""
    blocks: list[tuple] = [("h2", "Per-class recall")]
    for (ds, names), gs in by_classes.items():
        rows = []
        for g in gs:
            recalls = [{n: r["per_class"][n]["recall"] for n in names} for r in g.reports if r]
            agg = aggregate(recalls) if recalls else {}
            rows.append([g.scheme, g.label, *[_pm(agg, n) for n in names]])
        blocks.append(("h3", f"{ds}: {', '.join(names)}"))
        blocks.append(("table", ["scheme", "network", *names], rows))
    return blocks


def confusion_section(by_classes: dict[tuple, list[Group]], fig_dir: Path) -> list[tuple]:
    """The mean row-normalised confusion matrix of each group that has class reports."""
    blocks: list[tuple] = [("h2", "Confusion matrices"),
                           ("p", "Row-normalised (rows: true class), averaged over the runs of each group.")]
    for (ds, names), gs in by_classes.items():
        images = []
        for g in gs:
            p = mean_confusion(g, fig_dir / f"cm-{g.slug}.png")
            if p:
                images.append((p, f"{g.label}, {g.scheme}, {len(g.runs)} runs"))
        if images:
            blocks.append(("h3", f"{ds}: {', '.join(names)}"))
            blocks.append(("images", images))
    return blocks


def curves_section(groups: list[Group], client, fig_dir: Path) -> list[tuple]:
    """One learning-curve figure per dataset x scheme (hierarchies have no epochs of their own)."""
    blocks: list[tuple] = [("h2", "Learning curves")]
    by_scheme: dict[tuple, list[Group]] = {}
    for g in groups:
        if g.kind != "hierarchy":
            by_scheme.setdefault((stem(g.dataset), g.scheme), []).append(g)
    for (ds, scheme), gs in by_scheme.items():
        p = learning_curves(gs, client, fig_dir / f"curves-{slug(ds + '-' + scheme)}.png", f"{ds}, {scheme}")
        if p:
            blocks.append(("images", [(p, f"{ds}, {scheme}: every run; solid validation, dashed training")]))
    return blocks


def timing_section(groups: list[Group], refs: dict, fig_dir: Path) -> list[tuple]:
    """Epoch times and throughput per group with the devices they ran on, and the paper's timings."""
    timing_rows, table = [], []
    for g in groups:
        if g.kind == "hierarchy":
            continue
        m = g.metrics()
        params = g.runs[0].data.params
        row = {"model": g.model, "backend": g.backend, "dataset": stem(g.dataset), "scheme": g.scheme,
               "input": params.get("input_shape", "?"), "img_s": m.get("steady_train_images_per_s_mean", np.nan),
               "img_s_std": m.get("steady_train_images_per_s_std", 0.0)}
        timing_rows.append(row)
        table.append([stem(g.dataset), g.scheme, g.model, g.backend, row["input"], params.get("n_train", "?"),
                      f"{params.get('device', '?')}: {params.get('device_name', '?')}", params.get("cpu_threads", "?"),
                      _pm(m, "first_epoch_time_s", 1), _pm(m, "steady_epoch_time_s", 2),
                      _pm(m, "steady_train_images_per_s", 0), _pm(m, "test_inference_images_per_s", 0)])
    blocks: list[tuple] = [
        ("h2", "Time per epoch per backend"),
        ("table", ["dataset", "scheme", "model", "backend", "input", "train images", "device", "threads",
                   "first epoch (s)", "steady epoch (s)", "train img/s", "inference img/s"], table),
        ("p", "The first epoch includes graph building and warm-up; steady = the mean of the later epochs "
              "(training part only, validation excluded). " + "; ".join(
                  f"{t['label']}: {t['value_s_per_epoch']} s per epoch ({t['note']}) [{source_name(refs, t)}]"
                  for t in refs.get("timing") or []) + "."),
    ]
    p = timing_figure(timing_rows, fig_dir / "timing.png")
    if p:
        blocks.append(("images", [(p, "training throughput (mean +- std over runs)")]))
    return blocks


def saliency_section(groups: list[Group], client, fig_dir: Path) -> list[tuple]:
    """Feature maps and Grad-CAM of the first run of each group that logged them; no section if none did."""
    shown = []
    for g in groups:
        for r in g.runs:
            copied = copy_explain(client, r, fig_dir / f"explain-{g.slug}")
            if copied:
                shown.append((g, copied))
                break
    if not shown:
        return []
    blocks: list[tuple] = [
        ("h2", "Feature maps and Grad-CAM"),
        ("p", "First-convolution feature maps and Grad-CAM (last convolution, predicted class) of a few "
              "test galaxies per class, from one run of each group (`galmorph.workflows.explain`)."),
    ]
    for g, paths in shown:
        blocks.append(("h3", f"{g.label}, {stem(g.dataset)} {g.scheme}"))
        blocks.append(("images", [(p, p.stem.replace("_", " ")) for p in paths]))
    return blocks


def references_section(refs: dict) -> list[tuple]:
    """Every reference number with where it was published and the data set it was measured on."""
    rows = []
    for group in ("paper", "phys449"):
        for ref in refs.get(group) or []:
            rows.append([source_name(refs, ref), ref["label"], _value(ref), str(ref.get("dataset", "")), ref.get("note", "")])
    cites = [f"**{src.get('short', key)}**: {' '.join(str(src.get('cite', '')).split())}."
             for key, src in (refs.get("sources") or {}).items()]
    return [("h2", "Reference numbers"),
            ("table", ["source", "result", "test accuracy", "measured on", "note"], rows),
            ("p", " ".join(cites))]


def runs_section(groups: list[Group]) -> list[tuple]:
    """The (shortened) ids of the runs behind each group."""
    return [("h2", "Runs"),
            ("table", ["dataset", "scheme", "network", "run ids"],
             [[stem(g.dataset), g.scheme, g.label, " ".join(r.info.run_id[:8] for r in g.runs)] for g in groups])]


# ------------------------------------------------------------------------------ figures
def mean_confusion(g: Group, path: Path) -> Path | None:
    """The mean row-normalised confusion matrix of `g`'s class reports at `path`; None without reports."""
    mats = [np.asarray(r["confusion_matrix_normalised"], float) for r in g.reports if r]
    if not mats:
        return None
    report = {"class_names": list(g.class_names), "confusion_matrix_normalised": np.mean(mats, axis=0).tolist()}
    title = f"{g.label}, {stem(g.dataset)} {g.scheme}: recall, mean of {len(mats)}"
    return plots.confusion_matrix(report, path, normalised=True, title=title)


def learning_curves(groups: list[Group], client, path: Path, title: str) -> Path | None:
    """Validation (solid) and training (dashed) loss and accuracy per epoch of every run of
    `groups` (one colour per model x backend), side by side; None if no run logged epochs."""
    fig, (a1, a2) = plots.subplots(1, 2, figsize=(11, 4))
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
        return None
    a1.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    a2.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    a2.legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    return plots.save(fig, path)


def timing_figure(rows: list[dict], path: Path) -> Path | None:
    """Steady training throughput per row (a bar per group, coloured by backend); None if no row has one."""
    rows = [r for r in rows if np.isfinite(r.get("img_s", np.nan))]
    if not rows:
        return None
    fig, ax = plots.subplots(figsize=(max(5.0, 1.5 * len(rows) + 1.5), 3.8))
    colours = {"keras": "C0", "torch": "C1"}
    labels = [f"{r['model']} {r['backend']}\n{r['dataset']}\n{r['scheme']}\n{r['input']}" for r in rows]
    ax.bar(range(len(rows)), [r["img_s"] for r in rows], yerr=[r["img_s_std"] for r in rows],
           color=[colours.get(r["backend"], "C2") for r in rows], capsize=3)
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("training images / s (steady epochs)")
    ax.set_title("training throughput per backend")
    return plots.save(fig, path)


# ------------------------------------------------------------------------------ text
def _value(ref: dict) -> str:
    return f"{'> ' if ref.get('relation') == '>' else ''}{100 * ref['value']:.1f} %"


def _ref_text(refs: dict, ref: dict) -> str:
    """`81.0 % (C2 4-way; nair2010) [paper abstract]`: value, result, where measured, where published."""
    return f"{_value(ref)} ({ref['label']}; {ref['dataset']}) [{source_name(refs, ref)}]"


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


def _tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()
