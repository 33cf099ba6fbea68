import optuna
import pytest
import torch

from hpo.config import TrainConfig
from hpo.data import load_cifar10, train_val_split
from hpo.objective import Objective, trial_seed
from hpo.space import SearchSpace

BASE = TrainConfig(widths=(8, 16, 16), stem_width=8, batch_size=16, epochs=3)


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


@pytest.fixture
def objective(tiny_data_dir):
    train_split, val_split = train_val_split(load_cifar10(tiny_data_dir, download=False).train, 0.2)
    space = SearchSpace.from_dict({"augmentation": "flip", "scheduler": "cosine"})
    return Objective(space, BASE, train_split, val_split, torch.device("cpu"), study_seed=7)


def test_completed_trial_reports_every_epoch_and_stores_attributes(objective):
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == [1, 2, 3]
    attrs = trial.user_attrs
    assert attrs["val_acc_curve"] == pytest.approx([trial.intermediate_values[e] for e in (1, 2, 3)], abs=1e-6)
    assert attrs["epochs_run"] == 3 and attrs["device"] == "cpu" and attrs["seed"] == trial_seed(7, 0)
    assert attrs["train_seconds"] > 0 and attrs["images_per_second"] > 0
    assert TrainConfig.from_dict(attrs["config"]).augmentation == "flip"
    assert trial.value == pytest.approx(attrs["val_acc_curve"][-1], abs=1e-6)


def test_pruned_trial_stops_after_the_first_report_and_keeps_its_curve(objective):
    study = optuna.create_study(direction="maximize", pruner=AlwaysPrune())
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [1]
    assert trial.user_attrs["epochs_run"] == 1 and len(trial.user_attrs["val_acc_curve"]) == 1
    assert trial.user_attrs["stop_reason"] == "pruned after epoch 1"


def test_objective_raises_trial_pruned(objective):
    study = optuna.create_study(direction="maximize", pruner=AlwaysPrune())
    with pytest.raises(optuna.TrialPruned):
        objective(study.ask())


def test_trial_seeds_differ_by_trial_and_study():
    seeds = {trial_seed(s, n) for s in range(3) for n in range(50)}
    assert len(seeds) == 150
    assert (trial_seed(0, 5), trial_seed(2, 5)) == (5, 2_000_011)  # study seed x 1_000_003 + trial number
    assert all(0 <= trial_seed(s, n) < 2**31 for s in (0, 4000, 2**40) for n in (0, 10**6))


def test_a_retried_trial_trains_with_the_seed_of_the_trial_it_retries(objective):
    study = optuna.create_study(direction="maximize")
    for _ in range(4):
        study.tell(study.ask(), 0.0)
    trial = study.ask()  # trial 4, retrying trial 1
    assert objective.config_for(trial, origin=1).seed == trial_seed(7, 1) != trial_seed(7, 4)
    assert objective.config_for(trial, origin=4).seed == trial_seed(7, 4)


def test_a_failed_trial_keeps_its_epochs_and_time(objective, monkeypatch):
    import hpo.objective

    real_train = hpo.objective.train

    def fails_in_epoch_3(config, *args, on_epoch, **kwargs):
        def watch(stats):
            if stats.epoch == 3:
                raise RuntimeError("disk full")
            return on_epoch(stats)

        return real_train(config, *args, on_epoch=watch, **kwargs)

    monkeypatch.setattr(hpo.objective, "train", fails_in_epoch_3)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    study.optimize(objective, n_trials=1, catch=(RuntimeError,))
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.FAIL
    attrs = trial.user_attrs
    assert attrs["epochs_run"] == 2 and len(attrs["val_acc_curve"]) == len(attrs["val_loss_curve"]) == 2
    assert attrs["val_acc_curve"] == pytest.approx([trial.intermediate_values[e] for e in (1, 2)], abs=1e-6)
    assert attrs["wall_seconds"] > 0 and attrs["seed"] == trial_seed(7, 0) and "config" in attrs


def test_learning_curves_are_drawn_off_the_training_thread(objective, tmp_path, monkeypatch):
    import threading

    import hpo.notes
    from hpo.notes import artifact_store_for
    from hpo.worker import run_worker

    real_plot, drawn_in = hpo.notes.plot_learning_curve, []

    def plot(*args, **kwargs):
        drawn_in.append(threading.current_thread().name)
        return real_plot(*args, **kwargs)

    monkeypatch.setattr(hpo.notes, "plot_learning_curve", plot)
    objective.artifact_store = artifact_store_for("s", tmp_path)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    run_worker(study, objective, n_trials=2, deadline=None, bar=False)  # waits for the drawings when it ends
    assert len(drawn_in) == 2 and all(name.startswith("hpo-draw") for name in drawn_in)
    for trial in study.trials:
        (curve,) = [
            a
            for a in optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage)
            if a.filename.endswith(".png")
        ]
        assert (tmp_path / "s-artifacts" / curve.artifact_id).read_bytes().startswith(b"\x89PNG")


def test_the_deadline_stops_a_trial_between_epochs_but_never_after_its_last(tiny_data_dir):
    import dataclasses
    import time

    from hpo.objective import SearchTimeout

    train_split, val_split = train_val_split(load_cifar10(tiny_data_dir, download=False).train, 0.2)
    space = SearchSpace.from_dict({"augmentation": "flip", "scheduler": "cosine"})
    passed = Objective(space, BASE.replace(epochs=1), train_split, val_split, torch.device("cpu"), deadline=time.time())
    study = optuna.create_study(direction="maximize")
    study.optimize(passed, n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE  # its only epoch was its last: it completes
    longer = dataclasses.replace(passed, base=BASE.replace(epochs=2))
    with pytest.raises(SearchTimeout, match="after epoch 1"):
        longer(optuna.create_study(direction="maximize").ask())


def test_a_retry_counts_no_epochs_or_device_time_until_it_records_its_own(objective, monkeypatch):
    # A queued retry copies the failed attempt's attributes; a worker killed during the retry would leave them
    # standing, and the accounting would count that attempt's epochs and seconds twice.
    import hpo.objective

    study = optuna.create_study(direction="maximize")
    copied = {"epochs_run": 2, "epochs_trained": 2, "device_seconds": 40.0, "wall_seconds": 41.0}
    study.enqueue_trial({}, user_attrs=copied)
    seen = {}

    class Killed(Exception):
        pass

    def killed_while_training(*args, **kwargs):
        seen.update(study.trials[0].user_attrs)
        raise Killed

    monkeypatch.setattr(hpo.objective, "train", killed_while_training)
    with pytest.raises(Killed):
        study.optimize(objective, n_trials=1)
    assert {name: seen[name] for name in copied} == dict.fromkeys(copied, 0)
