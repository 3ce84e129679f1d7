"""The `galmorph` command. Subcommands are thin shells around importable functions.

User errors (GalmorphError) print one line, `galmorph: error: ...`, and exit with 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields

from galmorph.errors import GalmorphError


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
    from galmorph.train import run

    metrics = run(config_from(args, TrainConfig))
    keys = ("test_accuracy", "test_balanced_accuracy", "test_macro_f1", "epochs_run", "steady_epoch_time_s")
    print("  ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics))
    return 0


def cmd_data_download(args) -> int:
    from galmorph.data import registry

    if args.name != "galaxy10":
        raise GalmorphError(f"only galaxy10 is downloaded; {args.name}: {registry.DATASETS[args.name].how_to_get}")
    print(registry.galaxy10_path(download=True, progress=not args.quiet))
    return 0


def cmd_data_info(args) -> int:
    import numpy as np

    from galmorph import schemes
    from galmorph.data import registry

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
