"""``python -m federated.tune``: search the training command's settings with Optuna.

Examples::

    python -m federated.tune --study lr-width --trials 40 -- --data DIR --patience 4 --folds 5
    python -m federated.tune --study fed --trials 20 --mode federated -- --partition site
    python -m federated.tune --study shared --trials 100 --storage postgresql://user@db-host/optuna

Flags after ``--`` (or any flag this command does not know) are training flags
(``python -m federated.train --help``, ``--config FILE`` too): they hold for every trial. The search
space, a TOML file (``federated/search_spaces/``, format in ``federated/tuning/space.py``), says which
settings vary.

Each trial is a normal training run through ``federated.train.run`` with its own run folder,
``STUDY_DIR/trials/NNNN/``. The objective (maximised) is validation macro AUROC, the figure training
already selects epochs by (``federated.central.SELECT_KEY``): of the selected epoch/round on the
validation split, or with ``--folds K`` the mean over the K folds of each fold's validation part (the
part inside the fold's training part that selects its epoch). Test records are never looked at:
neither the split's test part nor a fold's out-of-fold test part.

Sampler: TPE. Pruning (``--pruner median``, default, or ``hyperband``): central runs report each
epoch's validation score through ``federated.progress_hook`` (with ``--folds``, step = fold x epochs +
epoch, so that trials are compared fold by fold); a trial whose score falls below the median of
earlier trials at the same step stops. Federated runs report per round once the server evaluation calls
the hook; until then they are scored when they finish.

Resuming: the study lives in ``--storage`` (default ``sqlite:///STUDY_DIR/study.db``). Run the same
command again and it continues: ``--trials N`` is the total the study should reach (completed, pruned
and failed trials count; a trial that was interrupted does not, and its parameters are queued again).
A trial left running by a process that was killed on this machine is found by its process id at
start-up; on another machine, by Optuna's heartbeat (after ``GRACE_SECONDS`` without one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from federated import progress_hook
from federated.config import TrainConfig, parse_config
from federated.data import DataError
from federated.tuning.outputs import PLOTS, best_config, best_trial, write_best_config, write_plots, write_tables
from federated.tuning.space import SearchSpace, SpaceError, default_space_file, field_names, load_space

log = logging.getLogger("federated")

# Optuna's heartbeat: a live worker stamps its running trial every HEARTBEAT_SECONDS; a trial without a
# stamp for GRACE_SECONDS belonged to a worker that died (another machine's, or this one's before the
# process-id check could see it) and is failed and queued again.
HEARTBEAT_SECONDS = 60
GRACE_SECONDS = 300
# Several failures in a row mean the setup is broken (not one unlucky trial): stop instead of burning N.
MAX_FAILURES_IN_A_ROW = 3
# Training flags that the search sets per trial itself, or that would make trials incomparable.
OWN_FLAGS = ("out", "resume")
# Not compared when a study is resumed: where the data and cache sit may differ between machines.
LOCAL_KEYS = frozenset({"data", "cache_dir", "workers", "device", "out", "resume"})


class StudyAbort(Exception):
    """Stops the whole search (bad data folder...), not just one trial; deliberately not a ValueError."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown in --help, except "None" (those flags say in words what they default to)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None or action.required else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m federated.tune",
        description="Hyperparameter search (Optuna, TPE) over the training command's settings. Other flags "
        "(e.g. after --) are training flags that hold for every trial: python -m federated.train --help.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--study", required=True, help="study name (in the storage) and folder name")
    p.add_argument("--trials", type=int, required=True, help="total trials the study should reach (a resumed study counts its earlier ones)")
    p.add_argument("--storage", default=None, help="Optuna RDB URL: postgresql://... or mysql+pymysql://... to share a study between machines (default sqlite:///STUDY_DIR/study.db)")
    p.add_argument("--study-dir", type=Path, default=None, help="folder for trials, tables and plots (default runs/tune/STUDY)")
    p.add_argument("--task", choices=("six", "beats"), default=None, help="six-label 12-lead task, or MIT-BIH beats (default: as the training flags say, else six)")
    p.add_argument("--mode", choices=("central", "federated"), default=None, help="central or federated training (default: as the training flags say, else central)")
    p.add_argument("--space", type=Path, default=None, help="search-space TOML (default federated/search_spaces/{central,federated,beats}.toml)")
    p.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median", help="stop trials early on their per-epoch validation score")
    p.add_argument("--startup-trials", type=int, default=10, help="random trials before TPE models the results (Optuna's default)")
    p.add_argument("--sampler-seed", type=int, default=None, help="seed of the sampler (a resumed study continues the sequence); default: random")
    return p


def worker_id() -> dict[str, Any]:
    """Who runs a trial: host, process id and the process's start time (a reused pid is not a match)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid())}


def _start_time(pid: int) -> str | None:
    try:  # Linux: field 22 of /proc/PID/stat, in clock ticks since boot
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(worker: dict) -> bool:
    pid = int(worker.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    start = worker.get("start")
    return start is None or _start_time(pid) in (None, start)


def enqueue_retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue the parameters of an interrupted trial again (the caller failed it, so no one else does)."""
    study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
    log.info("trial %d was interrupted: its parameters are queued again", trial.number)


def recover_dead_trials(study: optuna.Study) -> list[int]:
    """Fail and re-queue trials still marked running whose process (on this machine) is gone."""
    here = socket.gethostname()
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get("worker")
        if not w or w.get("host") != here or _alive(w):
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker failed it first
        enqueue_retry(study, t)
        recovered.append(t.number)
    return recovered


def counted(study: optuna.Study) -> int:
    """Trials that count towards --trials: finished ones (a failure with an error counts: it was tried)
    and running ones; interrupted ones do not (their re-queued copy will)."""
    n = 0
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
            n += 1
        elif t.state == TrialState.FAIL and "error" in t.user_attrs:
            n += 1
    return n


def objective_description(cfg: TrainConfig) -> str:
    if getattr(cfg, "task", "six") == "beats":
        if cfg.folds:
            return (f"mean over {cfg.folds} folds of the out-of-fold beat macro F1 (folds of the patients under --data; "
                    "the beat task's test records, MIT-BIH DS2, are another folder and never used)")
        return "validation beat macro F1 of the selected epoch (the beat task's own selection figure; DS2 never used)"
    if cfg.folds:
        return (f"mean over {cfg.folds} folds of the validation macro AUROC of each fold's selected epoch "
                "(the validation part inside each fold's training part; test parts never used)")
    if cfg.mode == "federated":
        return "validation macro AUROC of the selected round (pooled validation split; test split never used)"
    return "validation macro AUROC of the selected epoch (validation split; test split never used)"


def objective_value(cfg: TrainConfig, metrics: dict, run_dir: Path) -> tuple[float, dict]:
    """The figure to maximise and a few companions for the table (never a test figure)."""
    if getattr(cfg, "task", "six") == "beats":
        if cfg.folds:
            value = metrics["summary"]["macro"]["f1"]["mean"]
            extra = {"oof_f1_folds": [m["macro"]["f1"] for m in metrics["per_fold"]]}
        else:
            value, extra = metrics["val"]["macro"]["f1"], {"best_epoch": metrics.get("best_epoch")}
        if value is None or math.isnan(value):
            raise RuntimeError("beat macro F1 undefined")
        return float(value), extra
    if cfg.folds:
        aurocs, f1s = [], []
        for i in range(cfg.folds):
            m = json.loads((run_dir / f"fold{i}" / "metrics.json").read_text())["val"]["macro"]
            aurocs.append(m["auroc"])
            f1s.append(m["f1"])
        if any(a is None or math.isnan(a) for a in aurocs):
            raise RuntimeError(f"validation macro AUROC undefined in a fold ({aurocs}): too few validation records per class")
        return sum(aurocs) / len(aurocs), {"val_auroc_folds": aurocs, "val_f1_mean": sum(f1s) / len(f1s)}
    m = metrics["val"]["macro"]
    if m["auroc"] is None or math.isnan(m["auroc"]):
        raise RuntimeError("validation macro AUROC undefined: no class has both positive and negative validation records")
    best_key = "best_round" if cfg.mode == "federated" else "best_epoch"
    return float(m["auroc"]), {"val_f1": m["f1"], best_key: metrics.get(best_key)}


class Reporter:
    """Listener for ``progress_hook``: reports each validation score to the trial and prunes.

    With ``--folds`` every fold restarts at epoch 1; the step is then ``fold * epochs + epoch`` so that
    a fold's epoch is compared with the same fold's epoch in other trials (against the trial's best value
    so far, Optuna's rule: a strong early fold keeps a trial going)."""

    def __init__(self, trial: optuna.Trial, per_fold: int) -> None:
        self.trial, self.per_fold, self.fold, self.prev = trial, per_fold, 0, 0
        # Set when pruning was decided: a caller that swallows the exception (a Flower server thread)
        # cannot hide it, the objective checks this after the run.
        self.pruned: str | None = None

    def __call__(self, step: int, value: float) -> None:
        if step <= self.prev:
            self.fold += 1
        self.prev = step
        global_step = self.fold * self.per_fold + step
        if not math.isfinite(value):
            return
        self.trial.report(value, global_step)
        if self.trial.should_prune():
            self.pruned = f"validation score {value:.4f} at step {global_step} is below the median of earlier trials"
            raise optuna.TrialPruned(self.pruned)


def make_objective(base: TrainConfig, space: SearchSpace, study_dir: Path, current: dict):
    from federated.tuning.space import apply, suggest
    from federated.train import run

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker_id())
        current["trial"] = current["last"] = trial.number
        run_dir = study_dir / "trials" / f"{trial.number:04d}"
        try:
            params = suggest(trial, space, base)
            cfg = apply(base, params)
            cfg.out, cfg.resume = str(run_dir), False
            cfg.validate()
            if run_dir.exists():  # left by an earlier study of this name whose database was deleted
                log.info("trial %d: removing the stale run folder %s", trial.number, run_dir)
                shutil.rmtree(run_dir)
            trial.set_user_attr("run", str(run_dir))
            log.info("trial %d: %s", trial.number, ", ".join(f"{k}={v}" for k, v in params.items()))
            reporter = Reporter(trial, cfg.epochs if cfg.mode == "central" else cfg.rounds)
            try:
                with progress_hook.listening(reporter):
                    metrics = run(cfg)
            except Exception:
                if reporter.pruned:
                    raise optuna.TrialPruned(reporter.pruned) from None
                raise
            if reporter.pruned:
                raise optuna.TrialPruned(reporter.pruned)
            value, extra = objective_value(cfg, metrics, run_dir)
        except optuna.TrialPruned:
            raise
        except (DataError, FileNotFoundError) as exc:
            # The setup is broken, not these parameters: the trial does not count and is queued again.
            trial.set_user_attr("aborted", f"{type(exc).__name__}: {exc}"[:500])
            raise StudyAbort(str(exc)) from None
        except Exception as exc:  # recorded, so that the table says why; KeyboardInterrupt is not caught
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:500])
            raise
        for k, v in extra.items():
            trial.set_user_attr(k, v)
        return value

    return objective


def open_storage(url: str) -> optuna.storages.RDBStorage:
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}

    def on_stale(study: optuna.Study, trial: FrozenTrial) -> None:
        enqueue_retry(study, trial)

    try:
        with warnings.catch_warnings():  # the heartbeat is marked experimental; it is what resuming relies on
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=on_stale,
            )
    except ImportError as exc:
        raise StudyAbort(f"cannot open storage {safe_url(url)}: {exc} (install the database driver, e.g. "
                         "psycopg2-binary for postgresql://, PyMySQL for mysql+pymysql://)") from None
    except Exception as exc:  # sqlalchemy's errors for bad URLs, refused connections, ...
        raise StudyAbort(f"cannot open storage {safe_url(url)}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None


def safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"


def _comparable(cfg: TrainConfig) -> dict:
    return json.loads(json.dumps({k: v for k, v in cfg.to_dict().items() if k not in LOCAL_KEYS}))


def _space_record(space: SearchSpace) -> list:
    return json.loads(json.dumps([{k: v for k, v in dataclasses.asdict(p).items() if k != "line"} for p in space.params]))


def check_same_setup(study: optuna.Study, base: TrainConfig, space: SearchSpace) -> None:
    """A resumed (or shared) study must search the same space with the same fixed settings; the
    first worker records them in the study."""
    attrs = study.user_attrs
    if "base_config" not in attrs:
        study.set_user_attr("base_config", _comparable(base))
        study.set_user_attr("space", _space_record(space))
        study.set_user_attr("space_file", str(space.path))
        return
    old, new = attrs["base_config"], _comparable(base)
    # A setting added to TrainConfig since the study began counts as unchanged while it keeps its default.
    defaults = _comparable(TrainConfig())
    diff = [
        f"{k}={old.get(k)!r} (now {new.get(k)!r})" for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k) and not (k not in old and new.get(k) == defaults.get(k))
    ]
    if diff:
        raise StudyAbort(f"study {study.study_name!r} was started with other training settings: {'; '.join(diff)}. "
                         "Give the same flags, or start a new --study")
    if attrs.get("space") != _space_record(space):
        raise StudyAbort(f"study {study.study_name!r} was started with another search space ({attrs.get('space_file')}); "
                         f"{space.path} differs. Use the same space, or start a new --study")


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":
        # 3 trials before pruning, never at steps 1-2 (steps below n_warmup_steps; one-cycle warm-up makes the
        # first epochs noisy). Optuna compares the trial's best value so far with the others' at the same step.
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=2, reduction_factor=3)
    return optuna.pruners.NopPruner()


def write_outputs(study: optuna.Study, base: TrainConfig, space: SearchSpace, study_dir: Path, storage: str,
                  target: int, plots: bool) -> None:
    trials = study.get_trials(deepcopy=False)
    states = {s: sum(t.state == s for t in trials) for s in TrialState}
    best = best_trial(study)
    header = [
        f"# Hyperparameter search: {study.study_name}",
        "",
        f"- objective (maximised): {objective_description(base)}",
        f"- storage: `{storage}`; search space: `{space.path}`; sampler TPE; trials asked for: {target}",
        f"- trials: {states[TrialState.COMPLETE]} complete, {states[TrialState.PRUNED]} pruned, "
        f"{states[TrialState.FAIL]} failed or interrupted, {states[TrialState.RUNNING]} running",
    ]
    if best is not None:
        cfg = best_config(base, best, study_dir / "best")
        write_best_config(study_dir / "best_config.json", cfg)
        header += [
            f"- best: trial {best.number}, value {best.value:.4f}: "
            + ", ".join(f"{k}={v}" for k, v in best.params.items()),
            f"- retrain it: `python -m federated.train --config {study_dir / 'best_config.json'}`",
        ]
    if plots:
        notes = write_plots(study_dir, study)
        if 2 <= states[TrialState.COMPLETE] < 20:
            notes.append(f"parameter importances from {states[TrialState.COMPLETE]} completed trials: a rough first look, "
                         "not a ranking (fANOVA needs a few dozen)")
        header += [f"- plots: {', '.join(p for p in PLOTS if (study_dir / p).exists()) or 'none'}"] + [f"- {n}" for n in notes]
    write_tables(study_dir, study, space.names(), header)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("flwr").propagate = False
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial says more
    parser = build_parser()
    args, train_argv = parser.parse_known_args(argv)
    train_argv = [a for a in train_argv if a != "--"]
    if args.trials < 1:
        parser.error(f"--trials must be at least 1; got {args.trials}")
    for flag in OWN_FLAGS:
        if any(a == f"--{flag}" or a.startswith(f"--{flag}=") for a in train_argv):
            parser.error(f"--{flag} is set by the search for each trial (STUDY_DIR/trials/NNNN); use --study-dir")
    base = parse_config(train_argv)  # --config FILE and every training flag, checked by the training command
    if args.mode is not None:
        base = dataclasses.replace(base, mode=args.mode)
    if base.mode not in ("central", "federated"):
        parser.error(f"the search runs central or federated training; the training flags ask --mode {base.mode}")
    if "task" in field_names():
        if args.task is not None:
            base = dataclasses.replace(base, task=args.task)
    elif args.task == "beats":
        parser.error("--task beats needs the MIT-BIH beat task (TrainConfig.task), which this checkout does not have yet")
    try:
        base.validate()
    except ValueError as exc:
        parser.error(str(exc))
    study_dir = args.study_dir or Path("runs") / "tune" / args.study
    space_path = args.space or default_space_file(base.mode, getattr(base, "task", "six"))
    try:
        space = load_space(space_path, base)
    except SpaceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    study_dir.mkdir(parents=True, exist_ok=True)
    url = args.storage or f"sqlite:///{(study_dir / 'study.db').resolve()}"
    t0 = time.monotonic()
    current: dict = {"trial": None, "last": None}
    study: optuna.Study | None = None
    try:
        storage = open_storage(url)
        sampler = optuna.samplers.TPESampler(n_startup_trials=args.startup_trials, seed=args.sampler_seed)
        study = optuna.create_study(study_name=args.study, storage=storage, direction="maximize", load_if_exists=True,
                                    sampler=sampler, pruner=make_pruner(args.pruner))
        check_same_setup(study, base, space)
        recover_dead_trials(study)
        done = counted(study)
        log.info("study %s (%s): %d of %d trials counted so far; objective: %s",
                 args.study, safe_url(url), done, args.trials, objective_description(base))
        objective = make_objective(base, space, study_dir, current)
        failures = 0
        while (done := counted(study)) < args.trials:
            if args.sampler_seed is not None:  # a resumed study continues the sequence, not repeats it
                study.sampler = optuna.samplers.TPESampler(n_startup_trials=args.startup_trials, seed=args.sampler_seed + done)
            t_start = time.monotonic()
            study.optimize(objective, n_trials=1, catch=(RuntimeError, ValueError, ArithmeticError))
            current["trial"] = None
            last = _trial(study, current["last"])
            failures = failures + 1 if last.state == TrialState.FAIL else 0
            log_trial(study, last, time.monotonic() - t_start, args.trials)
            write_outputs(study, base, space, study_dir, safe_url(url), args.trials, plots=False)
            if failures >= MAX_FAILURES_IN_A_ROW:
                raise StudyAbort(f"{failures} trials in a row failed; the last: {last.user_attrs.get('error', '?')} "
                                 f"(table: {study_dir / 'trials.md'})")
        write_outputs(study, base, space, study_dir, safe_url(url), args.trials, plots=True)
    except KeyboardInterrupt:
        if study is None:
            return 130
        if current["trial"] is not None and _trial(study, current["trial"]).state == TrialState.FAIL:
            enqueue_retry(study, _trial(study, current["trial"]))
        write_outputs(study, base, space, study_dir, safe_url(url), args.trials, plots=False)
        print(f"interrupted; run the same command again to continue the study ({study_dir / 'trials.md'})", file=sys.stderr)
        return 130
    except StudyAbort as exc:
        if study is not None and current["trial"] is not None and _trial(study, current["trial"]).state == TrialState.FAIL:
            enqueue_retry(study, _trial(study, current["trial"]))
        if study is not None:
            write_outputs(study, base, space, study_dir, safe_url(url), args.trials, plots=False)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    best = best_trial(study)
    minutes = (time.monotonic() - t0) / 60
    if best is None:
        print(f"no trial completed ({minutes:.1f} min); table in {study_dir / 'trials.md'}")
        return 1
    print(f"best trial {best.number}: {best.value:.4f} ({objective_description(base)}); "
          f"{study_dir / 'best_config.json'}; {minutes:.1f} min")
    return 0


def _trial(study: optuna.Study, number: int) -> FrozenTrial:
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def log_trial(study: optuna.Study, t: FrozenTrial, seconds: float, target: int) -> None:
    best = best_trial(study)
    if t.state == TrialState.COMPLETE:
        what = f"value {t.value:.4f}"
    elif t.state == TrialState.PRUNED:
        what = f"pruned at step {max(t.intermediate_values) if t.intermediate_values else '?'}"
    else:
        what = f"failed: {t.user_attrs.get('error', 'interrupted')}"
    log.info("trial %d %s in %.0f s [%d/%d]; best so far %s", t.number, what, seconds, counted(study), target,
             f"{best.value:.4f} (trial {best.number})" if best else "none")


if __name__ == "__main__":
    sys.exit(main())
