"""What a study leaves behind: `summarize` (trial counts by state, the epoch accounting of
pruning, the best trial), the summary, search space, trials table and plots logged on the
study's parent run, and the one-line summary printed at the end."""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from pathlib import Path

from galmorph import tracking
from galmorph.tracking import figures as plots
from galmorph.workflows.tune.config import BASELINE, OBJECTIVE
from galmorph.workflows.tune.space import SearchSpace


def summarize(study, n_before: int = 0, study_run_id: str = "") -> dict:
    """Counts by state and the epoch accounting of the whole study (all invocations);
    n_trials_this_run counts the trials of the worker whose study run is `study_run_id` (other
    workers add trials meanwhile), or without it all trials after the first `n_before`."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
    by_state = {s: [t for t in trials if t.state == s] for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}

    def ran(t) -> int:
        return len(t.intermediate_values)

    def budget(t) -> int:
        return int(t.user_attrs.get("epochs_max", 0)) or ran(t)

    saved_pruning = sum(budget(t) - ran(t) for t in by_state[TrialState.PRUNED])
    saved_early = sum(budget(t) - ran(t) for t in by_state[TrialState.COMPLETE])
    per_epoch = [t.duration.total_seconds() / ran(t) for t in by_state[TrialState.COMPLETE] if t.duration and ran(t)]
    epoch_s = float(sorted(per_epoch)[len(per_epoch) // 2]) if per_epoch else float("nan")
    this_run = (sum(1 for t in trials if t.user_attrs.get("mlflow_study_run_id") == study_run_id) if study_run_id
                else len(trials) - n_before)
    out = {
        "study_name": study.study_name, "n_trials": len(trials), "n_trials_this_run": this_run,
        "n_complete": len(by_state[TrialState.COMPLETE]), "n_pruned": len(by_state[TrialState.PRUNED]),
        "n_failed": len(by_state[TrialState.FAIL]),
        "epochs_run": sum(ran(t) for t in done), "epochs_budget": sum(budget(t) for t in done),
        "epochs_saved_by_pruning": saved_pruning, "epochs_saved_by_early_stopping": saved_early,
        "median_epoch_time_s": epoch_s, "time_saved_by_pruning_s": saved_pruning * epoch_s,
        "trial_time_s": sum(t.duration.total_seconds() for t in done if t.duration),
        "best_value": None, "best_trial": None, "best_params": {}, "best_run_id": None, "best_config": {},
        # a cross-validated trial reports once per fold, so its steps are folds, not epochs
        "step_unit": "folds" if any("cv_values" in t.user_attrs for t in done) else "epochs",
    }
    out["epochs_saved_fraction"] = 1 - out["epochs_run"] / out["epochs_budget"] if out["epochs_budget"] else 0.0
    with contextlib.suppress(ValueError):
        best = study.best_trial
        out.update(best_value=best.value, best_trial=best.number, best_params=dict(best.params),
                   best_run_id=best.user_attrs.get("mlflow_run_id") or None,
                   best_config=dict(best.user_attrs.get("config_overrides", {})))
    out.update(against_baseline(trials, out["best_trial"]))
    return out


def against_baseline(trials, best_number: int | None) -> dict:
    """Does the best trial beat trial 0 (the base configuration, user attr BASELINE) by more
    than its spread? The spread is the std of the best trial's per-fold values (--cv-folds),
    not std / sqrt(K): the best of N trials was selected on these same folds, and the
    optimism of a maximum over N noisy means is about sqrt(2 ln N) standard errors (2.4 to
    2.6 for 20-30 trials), i.e. about the std itself at K = 5-7 folds. A margin beyond the std
    is one that selection noise alone seldom makes. Without folds there is no spread, and the
    answer (beats_baseline) is None."""
    from optuna.trial import TrialState

    out = {"baseline_trial": None, "baseline_value": None, "baseline_std": None, "best_std": None,
           "best_minus_baseline": None, "beats_baseline": None}
    base = next((t for t in trials if t.user_attrs.get(BASELINE)), None)
    best = next((t for t in trials if t.number == best_number), None)
    if base is None:
        return {**out, "baseline_verdict": "no trial 0 of the base configuration (a study made before galmorph "
                                           "enqueued one)"}
    out.update(baseline_trial=base.number, baseline_std=base.user_attrs.get("cv_std"))
    if base.state != TrialState.COMPLETE or best is None:
        return {**out, "baseline_verdict": f"trial {base.number} (the base configuration) is {base.state.name.lower()}; "
                                           "nothing to compare with yet"}
    margin, std = best.value - base.value, best.user_attrs.get("cv_std")
    out.update(baseline_value=base.value, best_std=std, best_minus_baseline=margin)
    if best.number == base.number:
        verdict = f"trial {base.number}, the base configuration, is the best: no trial beat it"
        out["beats_baseline"] = False
    elif std is None:
        verdict = (f"best trial {best.number} is {margin:+.4f} above trial {base.number} (the base configuration); "
                   "no spread without --cv-folds, so whether that is more than noise is unknown")
    else:
        out["beats_baseline"] = bool(margin > std)
        verdict = (f"best trial {best.number} {'beats' if margin > std else 'does not beat'} trial {base.number} "
                   f"(the base configuration) by more than its spread: {margin:+.4f} against a std of {std:.4f} "
                   "across folds")
    return {**out, "baseline_verdict": verdict}


def log_study(study, summary: dict, space: SearchSpace) -> None:
    """Log `summary` on the active run (the study's parent): its finite numbers as metrics, the
    best trial as tags and best_* params, and the study's files; plots that cannot be drawn are
    listed in the tag plots_skipped."""
    import mlflow
    import yaml

    numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
               and v is not None and math.isfinite(float(v)) and k not in ("best_trial", "baseline_trial")}
    mlflow.log_metrics({k: float(v) for k, v in numbers.items()})
    mlflow.set_tags({"beats_baseline": str(summary.get("beats_baseline")).lower(),
                     "baseline_verdict": summary.get("baseline_verdict", "")[:4000]})
    if summary["best_trial"] is not None:
        mlflow.set_tags({"best_trial_number": str(summary["best_trial"]), "best_run_id": summary["best_run_id"] or ""})
        tracking.log_params({f"best_{k}": v for k, v in summary["best_params"].items()})
    else:
        mlflow.set_tag("best_trial_number", "none")
    skipped = []
    with tracking.artifact_dir() as out:
        (out / "search_space.yaml").write_text(space.text)
        (out / "study_summary.json").write_text(json.dumps(summary, indent=2, default=str))
        if summary["best_config"]:
            (out / "best_config.yaml").write_text(yaml.safe_dump(summary["best_config"], sort_keys=False))
        elif summary["best_trial"] is not None:  # no overrides: the best is the base configuration (trial 0)
            (out / "best_config.yaml").write_text("{}  # the base configuration itself (study user attr "
                                                  "galmorph_base_config)\n")
        with contextlib.suppress(Exception):
            frame = study.trials_dataframe(attrs=("number", "value", "state", "duration", "params", "user_attrs"))
            frame.to_csv(out / "trials.csv", index=False)
        (out / "plots").mkdir()
        skipped = study_plots(study, out / "plots")
    if skipped:
        mlflow.set_tag("plots_skipped", "; ".join(skipped)[:4000])


PLOTS = ("optimization_history", "param_importances", "parallel_coordinate", "intermediate_values")


def study_plots(study, folder: Path) -> list[str]:
    """Write the study's plots as PNG; return 'name: reason' for each one that could not be made."""

    plots.pyplot()  # the Agg backend (unless the session chose one) before optuna imports pyplot
    import optuna.visualization.matplotlib as vm

    skipped = []
    for name in PLOTS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = getattr(vm, f"plot_{name}")(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(max(fig.get_figwidth(), 8), max(fig.get_figheight(), 5))
            plots.save(fig, folder / f"{name}.png")
        except Exception as exc:  # too few trials for importances, etc.: the others still get drawn
            skipped.append(f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    return skipped


def print_summary(s: dict) -> None:
    """One line on stdout: trial counts, the best trial and the epochs pruning saved."""
    best = (f"best {OBJECTIVE} {s['best_value']:.4f} (trial {s['best_trial']}, run {s['best_run_id']})"
            if s["best_trial"] is not None else "no complete trial yet")
    print(f"study {s['study_name']}: {s['n_trials']} trials ({s['n_complete']} complete, {s['n_pruned']} pruned, "
          f"{s['n_failed']} failed); {best}; {s.get('step_unit', 'epochs')} run {s['epochs_run']} of "
          f"{s['epochs_budget']} "
          f"({s['epochs_saved_by_pruning']} saved by pruning)")
    if s.get("baseline_verdict"):
        print(f"against the base configuration: {s['baseline_verdict']}")
