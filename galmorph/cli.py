"""The `galmorph` command. Subcommands are thin shells around importable functions; their
flags are derived from the config classes (galmorph.config.settings_of), never restated here.

User errors (GalmorphError) print one line, `galmorph: error: ...`, and exit with 2.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from galmorph.core.errors import GalmorphError
from galmorph.tracking import record_failure, redact


class _Parser(argparse.ArgumentParser):
    """argparse with galmorph's one-line errors: `galmorph: error: ...` and exit 2, no usage
    block; under `mlflow run` the reason is also recorded on the run that MLflow started."""

    def error(self, message: str):
        command = self.prog.removeprefix("galmorph").strip()
        hint = f"; see `galmorph {command} --help`" if command else "; see `galmorph --help`"
        fail(f"{message}{hint}")


def fail(message: str) -> None:
    """Print a one-line error (credentials masked), record it on the `mlflow run` run if there
    is one, exit 2."""
    _print_error(message)
    record_failure(message)
    sys.exit(2)


def _print_error(message: str) -> None:
    print(f"galmorph: error: {redact(message)}", file=sys.stderr)


def add_config_arguments(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    """One --flag per setting of a config class (galmorph.config.settings_of), typed, with its
    help, allowed values and default."""
    from galmorph.config import settings_of

    for s in settings_of(cls):
        if s.name in skip:
            continue
        if s.presettable:  # None = not given: the preset's value, else the default (galmorph.presets)
            help_text = f"{s.help} (default: the preset's, else {s.default})"
        else:
            help_text = s.help + (" (required)" if s.required else f" (default: {s.default})")
        help_text = help_text.replace("%", "%%")  # argparse formats help with %: "30 %" is text here
        # a yes/no flag alone means yes (`--close-stale`); `--quiet true` as MLproject passes it works too;
        # so does a choice that extends yes/no (`--tta` = `--tta true`, or `--tta dihedral`)
        switch = {"nargs": "?", "const": True} if s.type is bool else \
            {"nargs": "?", "const": "true"} if s.choices and "true" in s.choices else {}
        parser.add_argument(s.flag, dest=s.name, type=_bool if s.type is bool else s.type,
                            default=None if s.presettable else s.default,
                            required=s.required, choices=s.choices, metavar=None if s.choices else s.name.upper(),
                            help=help_text, action=_Given, **switch)


class _Given(argparse.Action):
    """Store a flag's value and remember that it was given (`--resume` checks those against
    the run's settings; the flags not given take the run's values)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        given = getattr(namespace, "_given", None) or set()
        setattr(namespace, "_given", given | {self.dest})


def given_flags(args) -> set[str]:
    """The config settings whose flags were given on the command line."""
    return set(getattr(args, "_given", None) or ())


def _bool(text):
    from galmorph.config import parse_bool

    try:
        return parse_bool(text)
    except GalmorphError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def config_from(args, cls):
    """The config of class `cls` that the parsed flags describe, presets resolved: a
    presettable flag not given (None) takes the preset's value (galmorph.presets.resolve)."""
    from galmorph import presets

    return presets.resolve(cls, {k: v for k, v in vars(args).items() if v is not None and k != "_given"})


def _underscored_flags(argv: list[str]) -> list[str]:
    """`--batch_size 32` as `--batch-size 32`: `mlflow run` passes a -P parameter that MLproject
    does not declare (the presettable ones, see galmorph.presets) as --<its name> <value>."""
    out = []
    for word in argv:
        if word.startswith("--") and "_" in word.split("=", 1)[0]:
            head, eq, tail = word.partition("=")
            word = head.replace("_", "-") + eq + tail
        out.append(word)
    return out


def cmd_train(args) -> int:
    from galmorph.config import TrainConfig
    from galmorph.workflows.train import closing_summary, run

    started = []
    metrics = run(config_from(args, TrainConfig), started=started.append, given=given_flags(args))
    if started:
        print(closing_summary(started[0], metrics), flush=True)
    else:  # data-parallel: the replicas' launcher did not start the run itself
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

    record = registry.DATASETS[args.name]
    if not record.urls:
        raise GalmorphError(f"{args.name} is not downloaded; {record.how_to_get}")
    print(registry.downloaded_path(record, download=True, progress=not args.quiet))
    return 0


def cmd_data_info(args) -> int:
    from galmorph.data import registry

    print(registry.describe(args.dataset, args.scheme, schemes_file=args.schemes_file))
    return 0


def cmd_data_generate(args) -> int:
    from galmorph.data import synthetic

    print(synthetic.load_or_generate(args.n, args.size, seed=args.seed, noise=args.noise))
    return 0


def cmd_data_prepare(args) -> int:
    from galmorph.data.nair2010 import PrepareConfig
    from galmorph.workflows import prepare_nair2010

    manifest = prepare_nair2010.run(config_from(args, PrepareConfig), progress=not args.quiet)
    print(f"{manifest['path']}: {manifest['n_galaxies']} galaxies, {manifest['n_failed']} without a cutout")
    return 0


def cmd_multiseed(args) -> int:
    from galmorph.workflows import multiseed

    config = config_from(args, multiseed.MultiseedConfig)
    seeds = multiseed.parse_seeds(config.seeds, config.base.seed)
    schemes = multiseed.expand_schemes(config.base, config.schemes)
    for scheme, summary in multiseed.sweep(config.base, seeds, schemes, ensemble=config.ensemble).items():
        print(multiseed.summary_line(scheme, summary))
    return 0


def cmd_hierarchy(args) -> int:
    from galmorph.workflows import hierarchy, multiseed

    print(multiseed.hierarchies(config_from(args, hierarchy.HierarchyConfig)))
    return 0


def cmd_report(args) -> int:
    from galmorph.workflows import report

    paths = report.run(config_from(args, report.ReportConfig))
    print("\n".join(str(p) for p in paths))
    return 0


def cmd_explain(args) -> int:
    from galmorph.workflows import explain

    config = config_from(args, explain.ExplainConfig)
    result = explain.explain_run(config.run_id, per_class=config.per_class)
    print(f"run {config.run_id}: explained {len(result['labels'])} test galaxies (artifacts under explain/)")
    return 0


def cmd_predict(args) -> int:
    from galmorph.workflows import predict, spark

    config = config_from(args, predict.PredictConfig)
    summary = (spark.run if config.spark else predict.run)(config)  # spark: predict on a Spark cluster
    failed = f"; {summary.n_failed} failed, listed in {summary.errors}" if summary.n_failed else ""
    print(f"{summary.output}: {summary.n_predicted} galaxies predicted{failed}", flush=True)
    return summary.exit_code


def cmd_runs(args) -> int:
    from galmorph.workflows import runs

    runs.run(config_from(args, runs.RunsConfig))  # prints its table
    return 0


def _command(sub, name: str, cls, func, help: str, description: str, skip=()) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=description, allow_abbrev=False)  # a _Parser, like its parent
    if cls is not None:
        add_config_arguments(p, cls, skip)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    from galmorph import __version__
    from galmorph.config import TrainConfig
    from galmorph.data import registry
    from galmorph.data.nair2010 import PrepareConfig
    from galmorph.workflows.convert import ConvertConfig, run as convert
    from galmorph.workflows.explain import ExplainConfig
    from galmorph.workflows.hierarchy import HierarchyConfig
    from galmorph.workflows.multiseed import MultiseedConfig
    from galmorph.workflows.predict import PredictConfig
    from galmorph.workflows.report import ReportConfig
    from galmorph.workflows.runs import RunsConfig
    from galmorph.workflows.tune import RetrainConfig, TuneConfig

    # no abbreviated flags: `--epoch 3` must not silently mean `--epochs 3` (or whatever a new flag makes it)
    parser = _Parser(prog="galmorph", description="CNN galaxy morphology experiments, tracked in MLflow.",
                     allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"galmorph {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    _command(sub, "train", TrainConfig, cmd_train, "train and evaluate one network, logged to MLflow",
             "Train C1 or C2 with Keras or PyTorch and log everything to MLflow.")
    _command(sub, "tune", TuneConfig, cmd_tune,
             "run or continue an Optuna study (one MLflow parent run, a child run per trial)",
             "Tune C1 or C2 over experiments/search_spaces/<model>.yaml with Optuna; rerun with the same "
             "--study-name and --storage to continue a study, or start several workers on one PostgreSQL storage. "
             "The training flags set what every trial starts from; the search space overrides some of them.")
    _command(sub, "retrain", RetrainConfig, cmd_retrain, "train a study's best trial on train+validation and test it once",
             "Retrain the best trial of an Optuna study (or --trial N; 0 is the base configuration) on "
             "train+validation for a fixed number of epochs, then evaluate once on the study's untouched test split.")

    data = sub.add_parser("data", help="download, generate, prepare and inspect datasets", description="Dataset utilities.",
                          allow_abbrev=False)
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION", parser_class=_Parser)
    p = _command(dsub, "download", None, cmd_data_download,
                 "download Galaxy10 SDSS (210 MB) or Galaxy10 DECaLS (2.54 GB), checksum-verified, resumable",
                 "Download a dataset into the cache ($GALMORPH_CACHE or ~/.cache/galmorph).")
    p.add_argument("name", choices=[n for n in registry.names() if registry.DATASETS[n].urls], help="dataset to download")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p = _command(dsub, "info", None, cmd_data_info, "list datasets, or show one's classes under a scheme",
                 "Without a dataset, list the registered datasets.")
    p.add_argument("dataset", nargs="?", help=f"{', '.join(registry.names())} or a .h5 path")
    p.add_argument("--scheme", default="default", help="class scheme (default: the dataset's)")
    p.add_argument("--schemes-file", default=None, help="extra YAML file of class schemes")
    p = _command(dsub, "generate", None, cmd_data_generate, "generate (and cache) a synthetic dataset",
                 "Generate the synthetic E/S0/Sp/Irr set and print its cached path.")
    p.add_argument("--n", type=int, default=TrainConfig.synthetic_n, help="number of images (default: %(default)s)")
    p.add_argument("--size", type=int, default=69, help="image side in pixels (default: 69)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--noise", type=float, default=TrainConfig.synthetic_noise,
                   help="noise level / difficulty (default: %(default)s)")
    p = _command(dsub, "prepare", PrepareConfig, cmd_data_prepare,
                 "prepare nair2010: VizieR catalogue + SDSS cutouts (logged as an MLflow run)",
                 "Fetch the Nair & Abraham 2010 catalogue and its SDSS cutouts into a Galaxy10-format file "
                 "(resumable; cached cutouts are never fetched again) and log the manifest to MLflow.")
    p.add_argument("name", choices=["nair2010"], help="dataset to prepare")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p = _command(dsub, "convert", ConvertConfig, lambda a: convert(config_from(a, ConvertConfig)),
                 "write a folder of images + labels CSV, or an .h5, as a chunked, compressed Galaxy10-format file",
                 "Resumable; unmatched labels and images go to <stem>.errors.csv. See docs/scale.md.", skip=("source",))
    p.add_argument("source", metavar="SRC", help=_help_of(ConvertConfig, "source"))

    _command(sub, "multiseed", MultiseedConfig, cmd_multiseed,
             "repeat a training configuration over N seeds (nested runs, mean and std)",
             "Train one configuration once per seed as nested MLflow runs of a parent run that logs <metric>_mean "
             "and <metric>_std of every test metric. With several --schemes, one such group per scheme under a "
             "sweep run.")
    _command(sub, "hierarchy", HierarchyConfig, cmd_hierarchy,
             "train a hierarchical classifier of binary networks (experiments/hierarchies.yaml)",
             "One network per node of the tree, as nested runs; the combined classifier is evaluated on the flat "
             "scheme's test split. --seeds N repeats it as a multi-seed group.")
    _command(sub, "report", ReportConfig, cmd_report, "write the reproduction report (Markdown + HTML) from MLflow runs",
             "Read finished runs, group them by dataset, scheme, model, backend and training recipe, and write "
             "accuracy over seeds next to the paper's and PHYS449's numbers (each with its source), the recipe "
             "ablation where one network was trained with several recipes, per-class recall, confusion matrices, "
             "learning curves, timings and saliency figures.")
    _command(sub, "explain", ExplainConfig, cmd_explain, "feature maps and Grad-CAM of a logged run's model, added to that run",
             "Load a finished run's model, config and split, and log feature maps of the first convolutions and "
             "Grad-CAM saliency of a few test galaxies per class under explain/.")
    p = _command(sub, "predict", PredictConfig, cmd_predict,
                 "classify your own galaxies (images, folders, FITS, .h5, catalogues) with a logged model",
                 "Predict class probabilities of JPEG/PNG images and folders of them, FITS files, Galaxy10-format "
                 ".h5 files and CSV catalogues (ra, dec; cutouts from the SDSS SkyServer) with a logged galmorph "
                 "model, written to --output; galaxies that cannot be read go to <stem>.errors.csv. Exit code 0: all "
                 "predicted; 1: some failed; 2: usage error (nothing written). See docs/predict.md.",
                 skip=("model", "inputs"))
    p.add_argument("model", metavar="MODEL", help=_help_of(PredictConfig, "model"))
    p.add_argument("inputs", metavar="INPUT", nargs="+", help=_help_of(PredictConfig, "inputs"))
    _command(sub, "runs", RunsConfig, cmd_runs, "list RUNNING runs whose process is gone; --close-stale ends them KILLED",
             "List the RUNNING runs (of one experiment, or of all) whose process is gone: on this host, its pid "
             "no longer exists or belongs to another process; elsewhere, no heartbeat (one per epoch) for "
             "--stale-after minutes. --close-stale marks them KILLED with the reason; `galmorph train --resume "
             "RUN_ID` continues one from its checkpoint.")
    return parser


def _help_of(cls, name: str) -> str:
    from galmorph.config import settings_of

    return next(s.help for s in settings_of(cls) if s.name == name)


def main(argv=None) -> int:
    """Run one `galmorph` command; its exit code. Ctrl-C or SIGTERM: 130, once the run is marked
    KILLED (galmorph.core.interrupts: also when the interrupt surfaced as another error)."""
    from galmorph.core import console, interrupts

    console.quiet_mlflow()

    with interrupts.installed():
        try:
            argv = _underscored_flags(sys.argv[1:] if argv is None else list(argv))
            args = build_parser().parse_args(argv)  # imports for seconds: interruptible too
            return args.func(args)
        except KeyboardInterrupt as exc:  # its message names the signal when a run was ended KILLED first
            return _interrupted(interrupts.handled() or str(exc) or None)
        except GalmorphError as exc:
            if interrupts.pending():
                return _interrupted(interrupts.handled())
            _print_error(str(exc))
            if not getattr(exc, "recorded", False):
                record_failure(str(exc))
            return 2
        except Exception:
            if interrupts.pending():  # e.g. an ImportError made of a Ctrl-C inside a C extension
                return _interrupted(interrupts.handled())
            raise


def _interrupted(signal_name: str | None) -> int:
    print(f"galmorph: interrupted{f' ({signal_name})' if signal_name else ''}", file=sys.stderr)
    return 130


def entry() -> None:
    """The `galmorph` process: main(), then an exit that skips the interpreter's final garbage
    collections.

    Those walk every object of TensorFlow or PyTorch, several times, only to free memory the
    OS takes back anyway: measured after an interrupted training, 2 to 7 s (29 s once, on a
    loaded machine) against 0.4 s with the objects frozen. atexit handlers still run, and
    objects go as their references do; only cyclic garbage is left to the OS. Signals are
    ignored from then on. SIGUSR1 dumps every thread's Python stack to stderr (to see where
    a process that seems stuck waits).
    """
    import faulthandler
    import gc
    import signal

    from galmorph.core import interrupts

    with contextlib.suppress(AttributeError, ValueError, OSError):  # no SIGUSR1 (Windows), no stderr fd
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    # The process's own handlers (main's block then changes nothing), ignored once main is
    # done: a late signal, such as the SIGTERM `mlflow run` sends after the terminal's SIGINT,
    # would only turn 130 into -15.
    with interrupts.installed(then=signal.SIG_IGN):
        try:
            code = main()
        except KeyboardInterrupt:  # one that came between main's return and the end of the block
            code = 130
        finally:
            gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
