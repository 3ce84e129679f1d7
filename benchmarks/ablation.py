"""The recipe ablation of issue 14: each training ingredient against the baseline, same seeds.

Reads experiments/ablation.yaml (the baseline settings and each ingredient's changes), runs
`galmorph train` once per (configuration, seed) in its own process, into one MLflow
experiment, and prints the table: test accuracy and balanced accuracy (plain and over the
40 test-time views), mean +- sample std over seeds, and each configuration's gain over the
baseline as the mean of the per-seed differences +- its standard error (a seed fixes the
split, the augmentation order and the initial weights, so the differences are paired).
An ingredient "holds" where its mean gain exceeds two standard errors over at least 3 seeds
(galmorph.core.stats, which `galmorph report` uses for its ablation table too).

Runs already FINISHED in the experiment (found by run name) are not run again, so an
interrupted sweep continues where it stopped, and `--table-only` reprints the table. The
baseline's runs get the tag galmorph.recipe_reference=true, so that `galmorph report
--experiments ablation` compares every recipe with the baseline too.

Usage:
  python benchmarks/ablation.py --data ../shared/data/gz2_zhu5_sample.h5 --backend torch --seeds 0,1,2
  python benchmarks/ablation.py --data ... --backend torch --only baseline,balanced --table-only
  python benchmarks/ablation.py --data synthetic --backend keras --seeds 0 --only baseline --set epochs=1
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from galmorph.core import stats  # noqa: E402
from galmorph.workflows.report.collect import REFERENCE_TAG  # noqa: E402

METRICS = ("test_accuracy", "test_balanced_accuracy", "test_tta_accuracy", "test_tta_balanced_accuracy",
           "test_decision_accuracy", "test_decision_balanced_accuracy",  # decision: the validation-chosen rule
           "test_tta_decision_accuracy", "test_tta_decision_balanced_accuracy")  # both: what predict --tta answers
# the gains over the baseline, paired by seed: (column, the configuration's metric, the
# baseline's): the networks' argmax against each other, and each run's decision rule (what
# `galmorph predict` of its model answers) against the baseline's
GAINS = (("gain in accuracy", "test_accuracy", "test_accuracy"),
         ("gain in balanced accuracy", "test_balanced_accuracy", "test_balanced_accuracy"),
         ("gain, decision rules: accuracy", "test_decision_accuracy", "test_decision_accuracy"),
         ("gain, decision rules: balanced", "test_decision_balanced_accuracy", "test_decision_balanced_accuracy"))


def configurations(path: Path, only: list[str] | None) -> dict[str, dict]:
    """name -> full settings: the baseline, then each ingredient (its changes on the baseline)."""
    spec = yaml.safe_load(path.read_text())
    base = dict(spec["baseline"])
    out = {"baseline": base}
    for name, changes in (spec.get("ingredients") or {}).items():
        out[name] = {**base, **changes}
    if only:
        unknown = [n for n in only if n not in out]
        if unknown:
            raise SystemExit(f"ablation: unknown configuration(s) {', '.join(unknown)}; known: {', '.join(out)}")
        out = {n: out[n] for n in only}
    return out


def flags(settings: dict) -> list[str]:
    out = []
    for key, value in settings.items():
        out += ["--" + key.replace("_", "-"), str(value).lower() if isinstance(value, bool) else str(value)]
    return out


def run_name(name: str, backend: str, seed: int) -> str:
    return f"ablation-{name}-{backend}-s{seed}"


def finished(client, experiment_id: str | None, name: str):
    """The newest FINISHED run called `name`, or None."""
    if experiment_id is None:
        return None
    runs = client.search_runs([experiment_id], f"attributes.run_name = '{name}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def sweep(args, configs: dict[str, dict]) -> dict[tuple[str, int], dict]:
    import mlflow

    client = mlflow.MlflowClient()
    results = {}
    for seed in args.seeds:  # seed-major: every configuration gets seed 0 before any gets seed 1
        for name, settings in configs.items():
            experiment = client.get_experiment_by_name(args.experiment)
            key = run_name(name, args.backend, seed)
            done = finished(client, experiment.experiment_id if experiment else None, key)
            if done is None and not args.table_only:
                command = [sys.executable, "-m", "galmorph", "train", "--dataset", args.data, "--backend", args.backend,
                           *flags({**settings, **args.set}), "--seed", str(seed), "--experiment", args.experiment,
                           "--run-name", key, "--quiet", "true"]
                print(f"[{key}]", " ".join(command[3:]), flush=True)
                subprocess.run(command, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
                experiment = client.get_experiment_by_name(args.experiment)
                done = finished(client, experiment.experiment_id if experiment else None, key)
            if done is not None:
                results[(name, seed)] = dict(done.data.metrics)
                if name == "baseline" and done.data.tags.get(REFERENCE_TAG) != "true":
                    client.set_tag(done.info.run_id, REFERENCE_TAG, "true")  # the report's reference recipe
    return results


def _lowest_recall(prefix: str):
    """The recall of the class found least often (<prefix><class>): the rare class's fate;
    None for a run that did not log it."""
    def lowest(metrics: dict):
        found = [v for k, v in metrics.items() if k.startswith(prefix)]
        return min(found) if found else None
    return lowest


# the rare class and the cost beside the gain: (column, how a run's metrics give it)
COST = (("lowest class recall", _lowest_recall("test_recall_")),
        ("lowest, decision rule", _lowest_recall("test_decision_recall_")),
        ("parameters (M)", lambda m: m["trainable_params"] / 1e6),
        ("train img/s", lambda m: m["train_images_per_s"]),
        ("min/run", lambda m: m["fit_time_s"] / 60))


def table(results: dict, configs: dict, seeds: list[int]) -> str:
    """Markdown: mean +- std per metric, the paired gain over the baseline +- its SE, then the
    lowest per-class recall and the cost (parameters, training images/s, minutes per run)."""
    head = "| configuration | seeds | " + " | ".join(m.removeprefix("test_") for m in METRICS) + " | " + \
           " | ".join(c for c, _, _ in GAINS) + " | " + " | ".join(c for c, _ in COST) + " |"
    lines = [head, "|" + "---|" * (len(METRICS) + 2 + len(GAINS) + len(COST))]
    for name in configs:
        have = [s for s in seeds if (name, s) in results]
        if not have:
            continue
        cells = []
        for m in METRICS:
            vals = [results[(name, s)][m] for s in have if m in results[(name, s)]]
            cell = "{:.3f} ± {:.3f}".format(*stats.mean_std(vals)) if vals else "-"
            # runs from before a metric existed lack it: say over how many seeds the cell is
            cells.append(cell + (f" (seeds: {len(vals)})" if vals and len(vals) < len(have) else ""))
        gains = [_gain(results, name, have, mine, reference) for _, mine, reference in GAINS]
        costs = []
        for _, value in COST:
            vals = [v for v in (value(results[(name, s)]) for s in have) if v is not None]
            costs.append("-" if not vals else f"{vals[0]:.3g}" if len(vals) == 1 else
                         "{:.3g} ± {:.2g}".format(*stats.mean_std(vals)))
        lines.append(f"| {name} | {len(have)} | " + " | ".join(cells) + " | " + " | ".join(gains) + " | "
                     + " | ".join(costs) + " |")
    return "\n".join(lines)


def _gain(results: dict, name: str, seeds: list[int], metric: str, reference: str) -> str:
    """`metric` of configuration `name` against `reference` of the baseline, paired by seed."""
    have = [s for s in seeds if metric in results[(name, s)] and reference in results.get(("baseline", s), {})]
    if name == "baseline" or not have:
        return "-"
    gain = stats.paired_gain({s: results[("baseline", s)][reference] for s in have},
                             {s: results[(name, s)][metric] for s in have})
    return gain.text() if gain else "-"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset: a Galaxy10-format .h5 path or a registered name")
    parser.add_argument("--backend", default="torch", choices=("torch", "keras"))
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--only", default="", help="comma-separated configurations (default: all)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting in every configuration (e.g. epochs=1 for a quick check)")
    parser.add_argument("--experiment", default="ablation", help="MLflow experiment (default: ablation)")
    parser.add_argument("--spec", default=str(ROOT / "experiments" / "ablation.yaml"))
    parser.add_argument("--table-only", action="store_true", help="run nothing; print the table of finished runs")
    parser.add_argument("--output", default="", help="also write the table (markdown) to this file")
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.set = dict(item.split("=", 1) for item in args.set)
    configs = configurations(Path(args.spec), [n for n in args.only.split(",") if n] or None)
    results = sweep(args, configs)
    text = f"{args.backend}, {args.data}, seeds {','.join(map(str, args.seeds))}\n\n" + table(results, configs, args.seeds)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
