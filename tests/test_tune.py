"""The hyperparameter search end to end on real records: a study killed after one trial resumes from
SQLite and ends with two; its best config trains; search-space mistakes name the file and line;
per-epoch reports reach the pruner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from federated import progress_hook
from federated.train import main as train_main
from federated.tune import Reporter, main as tune_main, make_pruner

REPO = Path(__file__).resolve().parents[1]
# A tiny network, two epochs on about 100 records: a trial takes seconds.
TINY = json.dumps({"widths": [4, 8, 8, 8]})
SPACE = """\
# a small space for the tests
[lr]
type = "float"
low = 1e-3
high = 1e-2
log = true

[batch_size]
type = "categorical"
choices = [16, 32]

[model_kwargs.dropout]
type = "float"
low = 0.0
high = 0.5
"""


def _tune_args(study_dir: Path, space: Path, data: Path, cache: Path, epochs: int = 2) -> list[str]:
    return [
        "--study", "t", "--trials", "2", "--study-dir", str(study_dir), "--space", str(space), "--sampler-seed", "0",
        "--",
        "--data", str(data), "--cache-dir", str(cache), "--max-per-site", "20", "--epochs", str(epochs),
        "--model-kwargs", TINY, "--workers", "0",
    ]


def _load(study_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name="t", storage=f"sqlite:///{study_dir / 'study.db'}")


@pytest.fixture(scope="module")
def killed_and_resumed(small_data, tmp_path_factory):
    """Start a two-trial study in a real process, SIGKILL it while trial 1 runs, then run the same
    command again (in this process)."""
    root = tmp_path_factory.mktemp("tune")
    space = root / "space.toml"
    space.write_text(SPACE)
    study_dir, cache = root / "study", root / "cache"
    args = _tune_args(study_dir, space, small_data, cache)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "federated.tune", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (study_dir / "trials" / "0001").exists():  # trial 1 has started: trial 0 is done
            assert proc.poll() is None, f"the search ended before trial 1 started:\n{proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "trial 1 did not start within 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stderr.close()
    before = [(t.number, t.state) for t in _load(study_dir).get_trials()]
    code = tune_main(args)
    return {"dir": study_dir, "before": before, "code": code, "args": args,
            "other_epochs": _tune_args(study_dir, space, small_data, cache, epochs=3)}


def test_killed_study_resumes_and_ends_with_two(killed_and_resumed):
    r = killed_and_resumed
    assert r["before"] == [(0, TrialState.COMPLETE), (1, TrialState.RUNNING)]
    assert r["code"] == 0
    trials = _load(r["dir"]).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    # The killed trial's parameters ran again as trial 2; its failure is not counted against --trials.
    assert trials[2].user_attrs["retry_of"] == 1 and trials[2].params == trials[1].params
    for t in (trials[0], trials[2]):
        # central.fit reported every epoch's validation score; the objective is the selected (best) one.
        assert sorted(t.intermediate_values) == [1, 2]
        assert t.value == pytest.approx(max(t.intermediate_values.values()))
        assert 0 <= t.value <= 1
        assert (r["dir"] / "trials" / f"{t.number:04d}" / "metrics.json").exists()
    for name in ("best_config.json", "trials.md", "trials.csv", "optimization_history.png",
                 "param_importances.png", "parallel_coordinate.png"):
        assert (r["dir"] / name).stat().st_size > 0, name
    rows = (r["dir"] / "trials.csv").read_text().splitlines()
    assert rows[0].startswith("trial,state,value,val_f1") and len(rows) == 4
    assert "retry of trial 1" in (r["dir"] / "trials.md").read_text()


def test_finished_study_runs_no_more_trials(killed_and_resumed):
    r = killed_and_resumed
    assert tune_main(r["args"]) == 0
    assert len(_load(r["dir"]).get_trials()) == 3


def test_resume_with_other_training_flags_is_refused(killed_and_resumed, capsys):
    r = killed_and_resumed
    assert tune_main(r["other_epochs"]) == 2
    err = capsys.readouterr().err
    assert "was started with other training settings: epochs=2 (now 3)" in err
    assert len(_load(r["dir"]).get_trials()) == 3


def test_best_config_trains(killed_and_resumed, tmp_path):
    r = killed_and_resumed
    best = max((t for t in _load(r["dir"]).get_trials() if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    cfg_file = r["dir"] / "best_config.json"
    assert train_main(["--config", str(cfg_file), "--out", str(tmp_path / "run")]) == 0
    used = json.loads((tmp_path / "run" / "config.json").read_text())
    assert used["lr"] == pytest.approx(best.params["lr"]) and used["batch_size"] == best.params["batch_size"]
    assert used["model_kwargs"] == {**json.loads(TINY), "dropout": pytest.approx(best.params["model_kwargs.dropout"])}
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]["macro"]["auroc"] is not None


@pytest.mark.parametrize(
    "text, marker, words",
    [
        (SPACE + "\n[lernrate]\ntype = \"float\"\nlow = 1\nhigh = 2\n", "[lernrate]", ["unknown parameter 'lernrate'", "searchable:"]),
        (SPACE + "\n[model_kwargs.kernal]\ntype = \"int\"\nlow = 3\nhigh = 7\n", "[model_kwargs.kernal]",
         ["unknown parameter 'model_kwargs.kernal'", "takes: layers, widths"]),
        (SPACE.replace("low = 1e-3", "low = 1e-1"), "high = 1e-2", ["lr: bad range: low 0.1 must be below high 0.01"]),
        (SPACE.replace("choices = [16, 32]", "choices = [16, 32]\nlgo = true"), "lgo = true", ["unknown key 'lgo'"]),
        ("[ema]\ntype = \"float\"\nlow = 0.9\nhigh = 1.0\n", "[ema]", ["--ema must be in [0, 1)"]),
        ("[lr]\ntype = \"float\"\nlow = \n", "low = ", ["not valid TOML"]),
    ],
    ids=["unknown-field", "unknown-model-argument", "bad-range", "unknown-key", "refused-value", "toml-syntax"],
)
def test_bad_search_space_names_file_and_line(tmp_path, capsys, text, marker, words):
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith(marker.strip()))
    space = tmp_path / "bad.toml"
    space.write_text(text)
    assert tune_main(["--study", "bad", "--trials", "1", "--study-dir", str(tmp_path / "s"), "--space", str(space)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {space}:{line}: ") and len(err.splitlines()) == 1, err
    for w in words:
        assert w in err
    assert not (tmp_path / "s").exists()  # nothing was started


def test_reporter_steps_through_folds_and_prunes():
    study = optuna.create_study(direction="maximize", pruner=make_pruner("median"))
    for _ in range(3):  # the median pruner waits for 3 finished trials
        good = study.ask()
        for step in (1, 2, 3, 4):
            good.report(0.9, step)
        study.tell(good, 0.9)
    trial = study.ask()
    with progress_hook.listening(Reporter(trial, per_fold=2)):
        progress_hook.report(1, 0.5)  # fold 0, epoch 1 -> step 1: warm-up, never pruned
        progress_hook.report(2, 0.5)  # fold 0, epoch 2 -> step 2: warm-up
        with pytest.raises(optuna.TrialPruned):
            progress_hook.report(1, 0.4)  # fold 1 restarts at epoch 1 -> step 3, below the median 0.9
    assert study.get_trials()[3].intermediate_values == {1: 0.5, 2: 0.5, 3: 0.4}
    progress_hook.report(5, 0.5)  # nobody listens any more: a no-op


def test_augment_strength_scales_the_augmentations():
    """The searched knob: 0 leaves the window as it is, smaller strengths change it less, 1 is the default."""
    import torch

    from federated.augment import augment_batch

    x = torch.randn(16, 12, 500)
    out = {s: augment_batch(x, torch.Generator().manual_seed(0), 250.0, s) for s in (0.0, 0.5, 1.0)}
    assert torch.equal(out[0.0], x)
    assert torch.equal(out[1.0], augment_batch(x, torch.Generator().manual_seed(0), 250.0))
    change = {s: (out[s] - x).abs().mean().item() for s in (0.5, 1.0)}
    assert 0 < change[0.5] < change[1.0]
