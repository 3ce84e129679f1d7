"""The `galmorph` command. Subcommands are thin shells around importable functions.

User errors (GalmorphError) print one line, `galmorph: error: ...`, and exit with 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields

from galmorph.core.errors import GalmorphError


def add_config_arguments(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    """One --flag per field of a config dataclass, typed and with its help and default."""
    for f in fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not MISSING else None
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        kind = {"int": int, "float": float, "str": str, "bool": _bool}[f.type if isinstance(f.type, str) else f.type.__name__]
        parser.add_argument(flag, dest=f.name, type=kind, default=default, choices=f.metadata.get("choices"),
                            metavar=f.name.upper() if not f.metadata.get("choices") else None, help=help_text)


def _bool(text):
    from galmorph.config import parse_bool

    try:
        return parse_bool(text)
    except GalmorphError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def config_from(args, cls):
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


def cmd_train(args) -> int:
    from galmorph.config import TrainConfig
    from galmorph.workflows.train import run

    metrics = run(config_from(args, TrainConfig))
    keys = ("test_accuracy", "test_balanced_accuracy", "test_macro_f1", "epochs_run", "steady_epoch_time_s")
    print("  ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics))
    return 0


def cmd_tune(args) -> int:
    from galmorph.workflows.tune import TuneConfig, tune

    tune(config_from(args, TuneConfig))  # prints its summary
    return 0


def cmd_retrain(args) -> int:
    from galmorph.workflows.tune import RetrainConfig, retrain

    retrain(config_from(args, RetrainConfig))  # prints the study's and the test value
    return 0


def cmd_data_download(args) -> int:
    from galmorph.data import registry

    if args.name != "galaxy10":
        raise GalmorphError(f"only galaxy10 is downloaded; {args.name}: {registry.DATASETS[args.name].how_to_get}")
    print(registry.galaxy10_path(download=True, progress=not args.quiet))
    return 0


def cmd_data_info(args) -> int:
    import numpy as np

    from galmorph.data import registry, schemes

    if args.dataset is None:
        for name in registry.names():
            rec = registry.DATASETS[name]
            print(f"{name:10s} {rec.description}\n{'':10s} classes: {', '.join(rec.class_names)}; {rec.how_to_get}")
        return 0
    data = registry.load(args.dataset, args.scheme, schemes_file=args.schemes_file)
    counts = np.bincount(data.labels, minlength=len(data.class_names))
    print(f"{data.name}: {len(data)} images {data.images.shape[1:]} uint8, scheme {data.scheme}, digest {data.digest()}")
    for name, n in zip(data.class_names, counts):
        print(f"  {name:28s} {n:6d}")
    print(f"schemes: {', '.join(schemes.names(data.key, args.schemes_file))}")
    return 0


def cmd_data_generate(args) -> int:
    from galmorph.data import synthetic

    print(synthetic.load_or_generate(args.n, args.size, seed=args.seed, noise=args.noise))
    return 0


def cmd_data_prepare(args) -> int:
    """Prepare nair2010 as an MLflow run of its own: counts and failures as params, manifest
    and failures CSV as artifacts."""
    from pathlib import Path

    import mlflow

    from galmorph import tracking
    from galmorph.core.metrics import metric_safe
    from galmorph.data import nair2010
    from galmorph.tracking.tags import KIND

    out = Path(args.out).expanduser() if args.out else nair2010.default_output_path()
    tracking.configure(args.experiment)
    with tracking.run("prepare-nair2010", tags={KIND: "prepare", "dataset": "nair2010"}):
        tracking.log_params({"out": str(out), "cache_dir": args.cache_dir or "", "cutout_url": args.cutout_url,
                             "vizier_server": args.vizier_server or "", "workers": args.workers,
                             "max_rate": args.max_rate, "retries": args.retries, "timeout": args.timeout,
                             "limit": args.limit})
        try:
            manifest = nair2010.prepare(out, args.cache_dir or None, cutout_url=args.cutout_url,
                                        vizier_server=args.vizier_server or None, workers=args.workers,
                                        max_rate=args.max_rate, retries=args.retries, timeout=args.timeout,
                                        limit=args.limit or None, progress=not args.quiet)
        finally:
            if nair2010.failures_path(out).is_file():
                mlflow.log_artifact(str(nair2010.failures_path(out)))
        counts = {"n_galaxies": manifest["n_galaxies"], "n_failed": manifest["n_failed"],
                  "n_catalogue": manifest["n_catalogue"],
                  **{f"n_{metric_safe(k)}": v for k, v in manifest["class_counts"].items()}}
        tracking.log_params({**counts, "sha256": manifest["sha256"], "catalogue_server": manifest["catalogue_server"]})
        mlflow.log_metrics({k: float(v) for k, v in counts.items()})
        mlflow.log_artifact(str(nair2010.manifest_path(out)))
    print(f"{manifest['path']}: {manifest['n_galaxies']} galaxies, {manifest['n_failed']} without a cutout")
    return 0


def _print_summary(label: str, summary: dict) -> None:
    keys = ("test_accuracy", "test_balanced_accuracy", "test_macro_f1")
    parts = [f"{k}={summary[k + '_mean']:.4f}+-{summary[k + '_std']:.4f}" for k in keys if k + "_mean" in summary]
    print(f"{label}: " + "  ".join(parts or [f"{k}={summary[k]:.4f}" for k in keys if k in summary]))


def cmd_multiseed(args) -> int:
    from galmorph.config import TrainConfig
    from galmorph.workflows import multiseed

    config = config_from(args, TrainConfig)
    seeds = multiseed.parse_seeds(args.seeds, config.seed)
    for scheme, summary in multiseed.sweep(config, seeds, multiseed.expand_schemes(config, args.schemes)).items():
        _print_summary(scheme, summary)
    return 0


def cmd_hierarchy(args) -> int:
    from galmorph.config import TrainConfig
    from galmorph.workflows import hierarchy, multiseed

    config = config_from(args, TrainConfig)
    seeds = multiseed.parse_seeds(args.seeds, config.seed)
    if len(seeds) == 1:
        summary = hierarchy.run(config.replace(seed=seeds[0]), args.tree)
    else:
        summary = multiseed.run(config, seeds, hierarchy=args.tree)
    _print_summary(hierarchy.scheme_tag(args.tree), summary)
    return 0


def cmd_report(args) -> int:
    from galmorph.workflows import report

    paths = report.run(report.ReportConfig(
        experiments=[e.strip() for e in args.experiments.split(",") if e.strip()], filter=args.filter,
        output=args.output, log_experiment=args.log_experiment, title=args.title, include_nodes=args.include_nodes))
    print("\n".join(str(p) for p in paths))
    return 0


def cmd_explain(args) -> int:
    from galmorph.workflows import explain

    result = explain.explain_run(args.run_id, per_class=args.per_class)
    print(f"run {args.run_id}: explained {len(result['labels'])} test galaxies (artifacts under explain/)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from galmorph import __version__
    from galmorph.config import TrainConfig
    from galmorph.data import registry

    parser = argparse.ArgumentParser(prog="galmorph", description="CNN galaxy morphology experiments, tracked in MLflow.")
    parser.add_argument("--version", action="version", version=f"galmorph {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train and evaluate one network, logged to MLflow",
                       description="Train C1 or C2 with Keras or PyTorch and log everything to MLflow.")
    add_config_arguments(p, TrainConfig)
    p.set_defaults(func=cmd_train)

    from galmorph.workflows.tune import RetrainConfig, TuneConfig

    p = sub.add_parser("tune", help="run or continue an Optuna study (one MLflow parent run, a child run per trial)",
                       description="Tune C1 or C2 over experiments/search_spaces/<model>.yaml with Optuna; rerun "
                                   "with the same --study-name and --storage to continue a study, or start "
                                   "several workers on one PostgreSQL storage.")
    add_config_arguments(p, TuneConfig)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("retrain", help="train a study's best trial on train+validation and test it once",
                       description="Retrain the best trial of an Optuna study on train+validation for a fixed "
                                   "number of epochs, then evaluate once on the study's untouched test split.")
    add_config_arguments(p, RetrainConfig)
    p.set_defaults(func=cmd_retrain)

    data = sub.add_parser("data", help="download, generate, prepare and inspect datasets",
                          description="Dataset utilities.")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = dsub.add_parser("download", help="download Galaxy10 SDSS (210 MB, checksum-verified, resumable)",
                        description="Download a dataset into the cache ($GALMORPH_CACHE or ~/.cache/galmorph).")
    p.add_argument("name", choices=["galaxy10"], help="dataset to download")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_download)
    p = dsub.add_parser("info", help="list datasets, or show one's classes under a scheme",
                        description="Without a dataset, list the registered datasets.")
    p.add_argument("dataset", nargs="?", help=f"{', '.join(registry.names())} or a .h5 path")
    p.add_argument("--scheme", default="default", help="class scheme (default: the dataset's)")
    p.add_argument("--schemes-file", default=None, help="extra YAML file of class schemes")
    p.set_defaults(func=cmd_data_info)
    p = dsub.add_parser("generate", help="generate (and cache) a synthetic dataset",
                        description="Generate the synthetic E/S0/Sp/Irr set and print its cached path.")
    p.add_argument("--n", type=int, default=2000, help="number of images (default: 2000)")
    p.add_argument("--size", type=int, default=69, help="image side in pixels (default: 69)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--noise", type=float, default=1.0, help="noise level / difficulty (default: 1.0)")
    p.set_defaults(func=cmd_data_generate)
    p = dsub.add_parser("prepare", help="prepare nair2010: VizieR catalogue + SDSS cutouts (logged as an MLflow run)",
                        description="Fetch the Nair & Abraham 2010 catalogue and its SDSS cutouts into a Galaxy10-format "
                                    "file (resumable; cached cutouts are never fetched again) and log the manifest to MLflow.")
    p.add_argument("name", choices=["nair2010"], help="dataset to prepare")
    p.add_argument("--out", default="", help="output HDF5 file (default: $GALMORPH_CACHE/nair2010/nair2010.h5)")
    p.add_argument("--cache-dir", default="", help="catalogue and cutout cache (default: $GALMORPH_CACHE/nair2010)")
    p.add_argument("--cutout-url", default="https://skyserver.sdss.org/dr16/SkyServerWS/ImgCutout/getjpeg",
                   help="SDSS SkyServer ImgCutout getjpeg URL (default: DR16)")
    p.add_argument("--vizier-server", default="", help="VizieR mirror host (astroquery) or http(s) URL (built-in ASU client); "
                   "default: astroquery's mirror")
    p.add_argument("--workers", type=int, default=8, help="parallel cutout requests (default: 8)")
    p.add_argument("--max-rate", type=float, default=10.0, help="requests per second, all workers together (default: 10)")
    p.add_argument("--retries", type=int, default=4, help="retries per cutout on errors, 429 and 5xx (default: 4)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default: 30)")
    p.add_argument("--limit", type=int, default=0, help="only the first N catalogue rows (default: 0 = all 14,034)")
    p.add_argument("--experiment", default="galmorph", help="MLflow experiment outside `mlflow run` (default: galmorph)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_prepare)

    from galmorph.workflows import hierarchy

    p = sub.add_parser("multiseed", help="repeat a training configuration over N seeds (nested runs, mean and std)",
                       description="Train one configuration once per seed as nested MLflow runs of a parent run that "
                                   "logs <metric>_mean and <metric>_std of every test metric. With several --schemes, "
                                   "one such group per scheme under a sweep run.")
    add_config_arguments(p, TrainConfig)
    p.add_argument("--seeds", default="3", help="a count (3: seeds SEED..SEED+2) or a list (0,1,2) (default: 3)")
    p.add_argument("--schemes", default="", help="comma-separated schemes to sweep; `pairs` or `pairs:<scheme>` = every "
                   "class pair of the default or named scheme (the paper's binary classifiers) (default: --scheme)")
    p.set_defaults(func=cmd_multiseed)

    p = sub.add_parser("hierarchy", help="train a hierarchical classifier of binary networks (experiments/hierarchies.yaml)",
                       description="One network per node of the tree, as nested runs; the combined classifier is "
                                   "evaluated on the flat scheme's test split. --seeds N repeats it as a multi-seed group.")
    add_config_arguments(p, TrainConfig, skip=("scheme",))
    p.add_argument("--tree", default="early_late_4way", choices=hierarchy.names(), help="hierarchy (default: early_late_4way)")
    p.add_argument("--seeds", default="1", help="a count or a list of seeds, as for multiseed (default: 1)")
    p.set_defaults(func=cmd_hierarchy)

    p = sub.add_parser("report", help="write the reproduction report (Markdown + HTML) from MLflow runs",
                       description="Read finished runs, group them by dataset, scheme, model and backend, and write "
                                   "accuracy over seeds next to the paper's and PHYS449's numbers, per-class recall, "
                                   "confusion matrices, learning curves, timings and saliency figures.")
    p.add_argument("--experiments", default="galmorph", help="comma-separated MLflow experiment names (default: galmorph)")
    p.add_argument("--filter", default="", help="MLflow filter on the runs, e.g. \"tags.dataset = 'synthetic'\"")
    p.add_argument("--output", default="reports/reproduction", help="folder for report.md, report.html and figures "
                   "(default: reports/reproduction)")
    p.add_argument("--log-experiment", default="galmorph-reports", help="experiment of the report's own run outside "
                   "`mlflow run` (default: galmorph-reports)")
    p.add_argument("--title", default="Reproducing Cavanagh, Bekki & Groves 2021", help="report title")
    p.add_argument("--include-nodes", type=_bool, default=False, help="also list the binary node networks of "
                   "hierarchical classifiers as rows (default: false)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("explain", help="feature maps and Grad-CAM of a logged run's model, added to that run",
                       description="Load a finished run's model, config and split, and log feature maps of the first "
                                   "convolutions and Grad-CAM saliency of a few test galaxies per class under explain/.")
    p.add_argument("--run-id", required=True, help="MLflow run id of a galmorph training run")
    p.add_argument("--per-class", type=int, default=3, help="test galaxies per class (default: 3)")
    p.set_defaults(func=cmd_explain)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from galmorph.tracking import install_sigterm_handler

    install_sigterm_handler()
    try:
        return args.func(args)
    except GalmorphError as exc:
        print(f"galmorph: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("galmorph: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
