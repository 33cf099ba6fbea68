"""Export, retrain and report on studies made in the test."""

import json
import math
import re
import subprocess
import sys
import warnings

import optuna
import pandas as pd
import pytest
import torch
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from PIL import Image

from hpo.config import TrainConfig, load_config
from hpo.export import dump, trial_config
from hpo.report import retrain_blocks, write_report
from hpo.stats import Comparison, p_text, summarize, welch

TINY_CONFIG = TrainConfig(widths=(8, 16, 16), stem_width=8, batch_size=16, epochs=2)


def make_study(url: str, n: int = 8) -> optuna.Study:
    """A study with completed, pruned and failed trials shaped like the ones hpo.search records."""
    study = optuna.create_study(study_name="cifar10", storage=url, direction="maximize")
    study.set_user_attr("hpo_settings", {"epochs": 3})
    dists = {
        "lr_decoupled": FloatDistribution(0.5, 32, log=True),
        "augmentation": CategoricalDistribution(["flip", "none"]),
    }
    for i in range(n):
        params = {"lr_decoupled": 1.0 + i, "augmentation": "flip" if i % 2 else "none"}
        state = TrialState.PRUNED if i % 3 == 2 else TrialState.COMPLETE
        if i == n - 1:
            state = TrialState.FAIL
        epochs = 3 if state == TrialState.COMPLETE else 1
        curve = [0.1 + 0.05 * i * (e + 1) / 3 for e in range(epochs)]
        config = TINY_CONFIG.replace(lr=0.01 * (i + 1), augmentation=params["augmentation"])
        study.add_trial(
            create_trial(
                state=state,
                value=curve[-1] if state != TrialState.FAIL else None,
                params=params,
                distributions=dists,
                intermediate_values={e + 1: v for e, v in enumerate(curve)} if state != TrialState.FAIL else {},
                user_attrs={
                    "config": config.to_dict(),
                    "epochs_run": epochs,
                    "train_seconds": 2.0 * epochs,
                    "val_acc_curve": curve,
                    "seed": i,
                },
            )
        )
    return study


def test_stats_on_known_numbers():
    s = summarize([0.90, 0.92, 0.94])
    assert s.mean == pytest.approx(0.92) and s.std == pytest.approx(0.02)
    assert (s.ci_low, s.ci_high) == pytest.approx(
        (0.92 - 4.302653 * 0.02 / 3**0.5, 0.92 + 4.302653 * 0.02 / 3**0.5), rel=1e-5
    )
    c = welch([0.90, 0.92, 0.94], [0.80, 0.81, 0.82])
    # By hand: se = sqrt(0.02**2/3 + 0.01**2/3), t = 0.11/se = 8.5206, Welch df = 2.941, two-sided p = 0.00366.
    assert c.difference == pytest.approx(0.11) and c.t == pytest.approx(8.5206, rel=1e-4)
    assert c.p_value == pytest.approx(0.00366, rel=1e-2) and c.significant
    assert "a is better than b" in c.verdict("a", "b")
    same = welch([0.9, 0.91, 0.92], [0.905, 0.915, 0.9])
    assert not same.significant and "no significant difference" in same.verdict("a", "b")
    assert welch([0.9], [0.8]).verdict("a", "b").startswith("cannot tell")


def test_report_of_a_study_with_no_completed_trial(tmp_path):
    # As after a Ctrl-C in the first trial: failed and pruned trials only.
    study = optuna.create_study(study_name="cifar10", storage=f"sqlite:///{tmp_path}/s.db", direction="maximize")
    dist = {"lr_decoupled": FloatDistribution(0.5, 32, log=True)}
    study.add_trial(create_trial(state=TrialState.FAIL, params={"lr_decoupled": 2.0}, distributions=dist))
    pruned = {"lr_decoupled": 3.0}
    study.add_trial(
        create_trial(state=TrialState.PRUNED, params=pruned, distributions=dist, intermediate_values={1: 0.2})
    )
    markdown = write_report(study, tmp_path / "report")
    assert "Not available yet: too few completed trials" in markdown.split("Parameter importances")[1].split("##")[0]
    assert (tmp_path / "report" / "summary.html").exists()


def test_importances_are_not_shown_when_every_trial_scored_the_same(tmp_path):
    # fANOVA splits the importance evenly then, even onto a parameter that never changed.
    study = optuna.create_study(study_name="cifar10", storage=f"sqlite:///{tmp_path}/s.db", direction="maximize")
    dist = {"lr_decoupled": FloatDistribution(0.5, 32, log=True), "momentum": FloatDistribution(0.5, 0.99)}
    for lr in (1.0, 2.0, 4.0, 8.0):
        params = {"lr_decoupled": lr, "momentum": 0.9}
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.1, params=params, distributions=dist))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing on the user's terminal about the degenerate correlations and plots
        section = write_report(study, tmp_path / "report").split("Parameter importances")[1].split("##")[0]
    assert "Not available: every completed trial scored 0.1000" in section and "momentum" not in section
    assert not (tmp_path / "report" / "importances.png").exists()
    one = optuna.create_study(study_name="one", storage=f"sqlite:///{tmp_path}/s.db", direction="maximize")
    one.add_trial(create_trial(state=TrialState.COMPLETE, value=0.6, params=params, distributions=dist))
    section = write_report(one, tmp_path / "one").split("Parameter importances")[1].split("##")[0]
    assert "Not available yet: too few completed trials" in section  # one trial is too few, not "all the same"


def test_parameter_statistics_use_the_completed_trials_final_accuracy(tmp_path):
    # A pruned trial's value is an earlier epoch's accuracy: mixed in, it turned this correlation from +1 to -0.64
    # and made the better choice ("b") look worse.
    from hpo.report import parameter_blocks

    dist = {"lr": FloatDistribution(0.1, 10), "aug": CategoricalDistribution(["a", "b", "c"])}
    dist["lookahead"] = CategoricalDistribution([True, False])  # a boolean choice is a choice, not a number
    trials = [
        create_trial(
            state=TrialState.COMPLETE,
            value=v,
            params={"lr": lr, "aug": aug, "lookahead": lr % 2 == 0},
            distributions=dist,
        )
        for lr, aug, v in [(1, "a", 0.60), (2, "a", 0.62), (3, "b", 0.64), (4, "b", 0.66)]
    ] + [
        create_trial(
            state=TrialState.PRUNED, value=v, params={"lr": lr, "aug": aug, "lookahead": True}, distributions=dist
        )
        for lr, aug, v in [(5, "b", 0.20), (6, "b", 0.15), (7, "c", 0.10)]
    ]
    blocks = parameter_blocks(trials)
    numeric = blocks[1][1]
    assert numeric.loc["lr", "count"] == 4 and numeric.loc["lr", "corr with val acc"] == 1.0
    by_choice = blocks[3][1]
    means = by_choice["mean val acc"].to_dict()
    assert means == pytest.approx({"a": 0.61, "b": 0.65, "c": math.nan}, nan_ok=True)
    assert by_choice["completed"].to_dict() == {"a": 2, "b": 2, "c": 0}
    assert by_choice["pruned"].to_dict() == {"a": 0, "b": 2, "c": 1}
    assert parameter_blocks(trials[4:]) == [("p", "No completed trial yet.")]
    assert list(numeric.index) == ["lr"] and blocks[5][1]["mean val acc"].to_dict() == pytest.approx(
        {False: 0.62, True: 0.64}
    )


def test_accounting_counts_each_attempt_once_and_not_a_queued_retry(tmp_path):
    # Trial 0 timed out after 2 epochs (FAIL); its queued retry copied its attributes; trial 2 is that retry run to
    # the end from trial 0's checkpoint (2 epochs replayed, 1 trained); trial 3 is still queued with old attributes.
    from hpo.report import accounting_table

    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db", direction="maximize")
    dist = {"lr": FloatDistribution(0.1, 10)}
    failed = {"epochs_run": 2, "epochs_trained": 2, "device_seconds": 4.0}
    for state, attrs in [
        (TrialState.FAIL, failed),
        (TrialState.COMPLETE, {"epochs_run": 3, "epochs_trained": 1, "train_seconds": 2.0, "device_seconds": 2.5}),
        (TrialState.COMPLETE, {"epochs_run": 3, "train_seconds": 6.0, "device_seconds": 6.5}),  # from before the field
        (TrialState.WAITING, failed),
    ]:
        value = 0.5 if state == TrialState.COMPLETE else None
        trial = create_trial(state=state, value=value, params={"lr": 1.0}, distributions=dist, user_attrs=attrs)
        study.add_trial(trial)
    trials = study.trials
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    table = accounting_table(trials, finished, {"epochs": 3})["value"]
    assert table["trials run (all states but queued)"] == "3"
    assert table["epochs trained (every attempt, incl. failed; replayed epochs once)"] == str(2 + 1 + 3)
    assert table["total training seconds (finished trials)"] == "8.0"
    assert table["mean training seconds per finished trial"] == "4.0"
    assert table["device-seconds, total (all trials)"] == "13.0"


def test_report_files_and_sections(tmp_path):
    study = make_study(f"sqlite:///{tmp_path / 's.db'}")
    study.set_user_attr(
        "retrain",
        {
            "date": "2026-01-01",
            "device": "cpu",
            "seeds": [0, 1],
            "train_images": 100,
            "test_images": 20,
            "candidates": [
                {"label": "best (trial 6)", "test_acc": [0.5, 0.52], "summary": summarize([0.5, 0.52]).to_dict()},
                {"label": "runner-up (trial 4)", "test_acc": [0.4, 0.45], "summary": summarize([0.4, 0.45]).to_dict()},
            ],
            "verdict": "no significant difference between best (trial 6) and runner-up (trial 4)",
            "weights": "studies/cifar10-winner/model.pt",
        },
    )
    out = tmp_path / "report"
    markdown = write_report(study, out)
    frame = pd.read_csv(out / "trials.csv")
    assert len(frame) == len(study.trials) and "user_attrs_train_seconds" in frame.columns
    configs = frame.user_attrs_config.map(json.loads)  # JSON cells, not Python reprs
    assert configs[study.best_trial.number] == study.best_trial.user_attrs["config"]
    best = study.best_trial
    assert f"Trial {best.number}: validation accuracy **{best.value:.4f}**" in markdown
    for section in ("Parameter importances", "Compute accounting", "epochs saved by pruning", "Verdict", "95% CI"):
        assert section in markdown, section
    assert "lr_decoupled" in markdown.split("Parameter importances")[1].split("##")[0]
    html = (out / "summary.html").read_text()
    assert "<table" in html and 'src="curves.png"' in html
    # The HTML shows every cell as the Markdown does (pandas' own to_html printed bn_eps 1e-12 as 0.0)
    cells = [c.strip() for line in markdown.splitlines() if line.startswith("| ") for c in line.split("|")[1:-1]]
    assert "1e-12" in cells and "nan" not in cells
    html_cells = [c.strip() for c in re.findall(r"<t[dh][^>]*>([^<]*)</t[dh]>", html)]
    assert [c for c in cells if not (c and set(c) <= set(":-"))] == html_cells
    for name in ("history.png", "curves.png", "importances.png", "parallel.png"):
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.size[0] > 200
        assert f"]({name})" in markdown
    with Image.open(out / "parallel.png") as img:  # wide enough for its axis labels (Optuna's own: 6.4 inches)
        assert img.size[0] >= 8 * 110


@pytest.mark.parametrize("winner", ["best (trial 6)", "runner-up (trial 4)"])
def test_the_report_says_when_the_saved_weights_are_not_the_best_trials(tmp_path, winner):
    study = make_study(f"sqlite:///{tmp_path / 's.db'}")
    candidates = [
        {"label": "best (trial 6)", "test_acc": [0.5, 0.52], "summary": summarize([0.5, 0.52]).to_dict()},
        {"label": "runner-up (trial 4)", "test_acc": [0.6, 0.55], "summary": summarize([0.6, 0.55]).to_dict()},
    ]
    record = {"date": "2026-01-01", "device": "cpu", "seeds": [0, 1], "train_images": 100, "test_images": 20}
    record |= {"candidates": candidates, "winner": winner, "weights": "studies/cifar10-winner/model.pt"}
    study.set_user_attr("retrain", record)
    markdown = write_report(study, tmp_path / "r")
    assert f"Weights of the winner, {winner} (seed 0): `studies/cifar10-winner/model.pt`" in markdown
    explained = "here not the search's best trial (best (trial 6)), whose config is `best-config.json`" in markdown
    assert explained == (winner != "best (trial 6)")
    # A --config/--baseline retrain stored in the study: its candidates are no trials of the search
    for c, label in zip(candidates, ("config a", "baseline b")):
        c["label"] = label
    study.set_user_attr("retrain", record | {"candidates": candidates, "winner": "baseline b"})
    assert "the search's best trial" not in write_report(study, tmp_path / "r2")


def test_trials_csv_leaves_out_the_dashboards_artifact_columns():
    from hpo.report import trials_table

    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    study._storage.set_trial_system_attr(trial._trial_id, "artifacts:1234", {"filename": "curve.png"})
    trial.set_user_attr("val_acc_curve", [0.25, 0.5])
    trial.set_user_attr("val_loss_curve", [2.0, float("nan")])  # a diverged epoch
    study.tell(trial, 0.5)
    frame = trials_table(study)
    assert "system_attrs_artifacts:1234" in study.trials_dataframe().columns
    assert not [c for c in frame.columns if c.startswith("system_attrs_artifacts")]
    assert frame.user_attrs_val_acc_curve[0] == "[0.25, 0.5]"
    assert json.loads(frame.user_attrs_val_loss_curve[0], parse_constant=pytest.fail) == [2.0, None]  # strict JSON


def test_accounting_counts_pruning_savings(tmp_path):
    study = make_study(f"sqlite:///{tmp_path / 's.db'}")
    markdown = write_report(study, tmp_path / "r")
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    run = sum(t.user_attrs["epochs_run"] for t in finished)
    full = len(finished) * 3
    assert re.search(rf"epochs without pruning \({len(finished)} x 3\)\s*\|\s*{full}\s*\|", markdown)
    assert re.search(rf"epochs saved by pruning\s*\|\s*{full - run} \({1 - run / full:.0%}\)", markdown)


def run(module, *args, cwd):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_export_round_trip_and_train_from_the_file(tmp_path, tiny_data_dir, capsys):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = make_study(url)
    proc = run("hpo.export", "--storage", url, "--output", str(tmp_path / "best.json"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "best.json").read_text())
    assert doc["provenance"]["trial_number"] == study.best_trial.number
    assert doc["provenance"]["validation_accuracy"] == study.best_value
    assert {"torch", "optuna", "python"} <= set(doc["provenance"]["versions"])
    assert doc["provenance"]["search_settings"] == {"epochs": 3}  # the study's, as stored
    assert load_config(tmp_path / "best.json") == trial_config(study.best_trial)

    yaml_proc = run(
        "hpo.export", "--storage", url, "--trial", "1", "--format", "yaml", "--output", "t1.yaml", cwd=tmp_path
    )
    assert yaml_proc.returncode == 0, yaml_proc.stderr
    assert load_config(tmp_path / "t1.yaml") == trial_config(study.trials[1])
    from hpo.export import main as export

    capsys.readouterr()
    assert export(["--storage", url, "--trial", "2", "--output", "-"]) == 0
    provenance = json.loads(capsys.readouterr().out)["provenance"]
    assert (provenance["state"], provenance["epochs_run"]) == ("PRUNED", 1)  # its accuracy is epoch 1's

    top = run("hpo.export", "--storage", url, "--top-k", "3", "--output", "top", cwd=tmp_path)
    assert top.returncode == 0 and len(list((tmp_path / "top").glob("cifar10-trial*.json"))) == 3

    trained = run(
        "hpo.train",
        "--config",
        str(tmp_path / "best.json"),
        "--data-dir",
        str(tiny_data_dir),
        "--device",
        "cpu",
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr
    assert "done: val acc" in trained.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--study-name", "nope"], "no study file"),
        (["--trial", "99"], "has no trial 99"),
        (["--top-k", "0"], "--top-k must be at least 1"),
    ],
)
def test_export_errors(tmp_path, args, message):
    url = f"sqlite:///{tmp_path / 's.db'}"
    make_study(url)
    if args[0] != "--study-name":
        args = ["--storage", url, *args]
    proc = run("hpo.export", *args, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "studies" / "nope.db").exists()  # never creates an empty study file


def test_retrain_config_against_baseline_stores_result(tmp_path, tiny_data_dir):
    url = f"sqlite:///{tmp_path / 's.db'}"
    make_study(url)
    (tmp_path / "a.json").write_text(TINY_CONFIG.to_json())
    (tmp_path / "b.json").write_text(TINY_CONFIG.replace(lr=0.001, scheduler="step", augmentation="none").to_json())
    proc = run(
        "hpo.retrain",
        "--config",
        "a.json",
        "--baseline",
        "b.json",
        "--seeds",
        "2",
        "--epochs",
        "1",
        "--data-dir",
        str(tiny_data_dir),
        "--device",
        "cpu",
        "--study-name",
        "cifar10",
        "--storage",
        url,
        "--output",
        "r.json",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "r.json").read_text())
    assert [len(c["test_acc"]) for c in record["candidates"]] == [2, 2]
    assert record["test_images"] == 20 and record["train_images"] == 100  # train + validation, then test
    assert "verdict" in record
    stored = optuna.load_study(study_name="cifar10", storage=url).user_attrs["retrain"]
    assert stored["candidates"][0]["test_acc"] == record["candidates"][0]["test_acc"]
    assert (tmp_path / "a-retrain" / "model.pt").is_file()  # beside the study file
    assert proc.stdout.count("a-retrain") == 1  # where the weights went, said once
    assert "note: --config and --baseline differ" not in proc.stdout  # the same size: hyperparameters only


def test_a_baseline_of_another_size_is_named_before_the_runs(tmp_path, tiny_data_dir, monkeypatch, capsys):
    from hpo.retrain import main, size_differences

    a, b = TINY_CONFIG, TINY_CONFIG.replace(lr=0.001, widths=(8, 8, 8), epochs=6)
    assert size_differences(a, b) == [f"widths ({a.widths} against (8, 8, 8))", f"epochs ({a.epochs} against 6)"]
    assert size_differences(a, a.replace(lr=0.5, momentum=0.8)) == []
    assert size_differences(a, a.replace(train_subset=5000)) == []  # the retrain's --train-subset sets both
    (tmp_path / "a.json").write_text(a.to_json())
    (tmp_path / "b.json").write_text(b.to_json())
    monkeypatch.chdir(tmp_path)
    args = ["--config", "a.json", "--baseline", "b.json", "--seeds", "1", "--data-dir", str(tiny_data_dir)]
    assert main([*args, "--epochs", "1", "--device", "cpu", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "note: --config and --baseline differ in widths ((8, 16, 16) against (8, 8, 8)): the comparison" in out
    assert "epochs (" not in out  # --epochs 1 set both


def test_retrain_in_study_mode_with_train_subset(tmp_path, tiny_data_dir):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = make_study(url)
    proc = run(
        "hpo.retrain", "--storage", url, "--seeds", "1", "--epochs", "1", "--train-subset", "50",
        "--data-dir", str(tiny_data_dir), "--device", "cpu", "--output", "r.json", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "r.json").read_text())
    best, runner_up = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: -t.value)[:2]
    assert [c["label"] for c in record["candidates"]] == [
        f"best (trial {best.number})",
        f"runner-up (trial {runner_up.number})",
    ]
    assert [c["trial_number"] for c in record["candidates"]] == [best.number, runner_up.number]
    assert record["train_images"] == 50 and record["test_images"] == 20  # --train-subset caps train + validation
    assert all(c["config"]["epochs"] == 1 for c in record["candidates"])  # the trials' configs, --epochs 1 over them
    stored = optuna.load_study(study_name="cifar10", storage=url).user_attrs["retrain"]
    assert stored["candidates"] == record["candidates"] and stored["winner"] == record["winner"]
    saved = json.loads((tmp_path / "cifar10-winner" / "config.json").read_text())  # beside the study file
    assert saved["provenance"]["label"] == record["winner"] and (tmp_path / "cifar10-winner" / "model.pt").is_file()
    assert saved["config"]["train_subset"] == 50 and saved["config"]["seed"] == 0  # what train() was given


def _best_and_runner_up():
    """Retrain candidates told apart by their lr (0.01: the best, 0.02: the runner-up), as the fake trainers are."""
    import hpo.retrain

    return [
        hpo.retrain.Candidate("best (trial 1)", TINY_CONFIG.replace(lr=0.01), 1),
        hpo.retrain.Candidate("runner-up (trial 2)", TINY_CONFIG.replace(lr=0.02), 2),
    ]


class _Result:
    def __init__(self, acc: float, fill: float, diverged: bool = False) -> None:
        self.val_acc, self.train_seconds, self.diverged = acc, 1.0, diverged
        self.model = torch.nn.Linear(2, 1)
        torch.nn.init.constant_(self.model.weight, fill)


def test_retrain_saves_the_winners_weights_not_the_first_candidates(tmp_path, tiny_data_dir, monkeypatch):
    import hpo.retrain
    from hpo.data import load_cifar10

    accuracy = {0.01: 0.30, 0.02: 0.60}  # by lr: the runner-up is clearly better on the test set

    def fake_train(config, *args, **kwargs):
        return _Result(accuracy[config.lr] + 0.001 * config.seed, fill=config.lr)

    monkeypatch.setattr(hpo.retrain, "train", fake_train)
    candidates = _best_and_runner_up()
    data = load_cifar10(tiny_data_dir, download=False)
    record = hpo.retrain.retrain(candidates, data, torch.device("cpu"), 3, tmp_path / "w")
    assert record["winner"] == "runner-up (trial 2)" and "runner-up (trial 2) is better" in record["verdict"]
    saved = json.loads((tmp_path / "w" / "config.json").read_text())
    assert saved["provenance"] == {"label": "runner-up (trial 2)", "trial_number": 2}
    assert saved["config"]["lr"] == 0.02 and saved["config"]["seed"] == 0
    weights = torch.load(tmp_path / "w" / "model.pt", weights_only=True)
    assert torch.all(weights["weight"] == 0.02)
    assert "runner-up (trial 2)" in hpo.retrain.retrain_markdown(record)


def test_every_candidate_is_retrained_with_the_same_seeds(tiny_data_dir, monkeypatch):
    # Paired by seed, whatever seed a candidate's trial had: 0..k-1 for each.
    import hpo.retrain
    from hpo.data import load_cifar10

    seeds = []

    def fake_train_all(configs, data, device, jobs):
        for config in configs:
            seeds.append(config.seed)
            yield 0.5, 1.0, None, False

    monkeypatch.setattr(hpo.retrain, "_train_all", fake_train_all)
    candidates = [hpo.retrain.Candidate(name, TINY_CONFIG.replace(seed=seed)) for name, seed in (("a", 7), ("b", 0))]
    hpo.retrain.retrain(candidates, load_cifar10(tiny_data_dir, download=False), torch.device("cpu"), 2)
    assert seeds == [0, 1, 0, 1]


def test_each_retrain_run_prints_its_seconds_to_a_tenth(tiny_data_dir, monkeypatch, capsys):
    # About 3 s a run on a GPU: whole seconds could not tell 2.6 s from 3.4 s.
    import hpo.retrain
    from hpo.data import load_cifar10

    monkeypatch.setattr(hpo.retrain, "_train_all", lambda configs, *args: iter([(0.5, 3.26, None, False)]))
    candidates = [hpo.retrain.Candidate("a", TINY_CONFIG)]
    hpo.retrain.retrain(candidates, load_cifar10(tiny_data_dir, download=False), torch.device("cpu"), 1)
    assert "retrain a: seed 0 test acc 0.5000 (3.3s)" in capsys.readouterr().out


def test_diverged_runs_are_named_and_a_nan_mean_never_wins(tmp_path, tiny_data_dir, monkeypatch):
    import hpo.retrain
    from hpo.data import load_cifar10

    def fake_train(config, *args, **kwargs):  # the best's seed 0 diverges; the runner-up gives no score at all
        if config.lr == 0.02:
            return _Result(math.nan, fill=config.lr)
        return _Result(0.1 if config.seed == 0 else 0.6, fill=config.lr, diverged=config.seed == 0)

    monkeypatch.setattr(hpo.retrain, "train", fake_train)
    candidates = _best_and_runner_up()
    data = load_cifar10(tiny_data_dir, download=False)
    record = hpo.retrain.retrain(candidates, data, torch.device("cpu"), 2, tmp_path / "w")
    assert [c["diverged_seeds"] for c in record["candidates"]] == [[0], []]
    assert record["winner"] == "best (trial 1)"
    said = "Diverged (training loss became NaN/inf; each scored on the model it left): best (trial 1) seed 0."
    assert said in hpo.retrain.retrain_markdown(record)
    no_score = lambda config, *a, **k: _Result(0.5 if config.lr == 0.02 else math.nan, fill=0)  # noqa: E731
    monkeypatch.setattr(hpo.retrain, "train", no_score)
    record = hpo.retrain.retrain(candidates, data, torch.device("cpu"), 2, tmp_path / "w")
    assert record["winner"] == "runner-up (trial 2)"  # max() kept a NaN first candidate before
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db")
    study.set_user_attr("retrain", {**record, "candidates": [{**record["candidates"][0], "diverged_seeds": [1]}]})
    markdown = write_report(study, tmp_path / "r")
    assert "best (trial 1) seed 1." in markdown
    assert "Weights of the winner, runner-up (trial 2) (seed 0)" in markdown


def test_one_run_has_no_sd_and_a_p_that_rounds_to_alpha_stays_below_it():
    one = summarize([0.71])
    assert math.isnan(one.std) and str(one) == "0.7100 (one run: no CI or sd)"
    candidate = {"label": "a", "test_acc": [0.71], "summary": one.to_dict(), "text": str(one)}
    record = {"train_images": 9, "test_images": 9, "seeds": [0], "device": "cpu", "date": "-"}
    record["candidates"] = [candidate]
    table = retrain_blocks(record)[1][1]
    assert table["sd"].tolist() == ["n/a"] and table["95% CI"].tolist() == ["n/a"]
    assert p_text(0.04996) == "< 0.05" and p_text(0.0123) == "= 0.0123" and p_text(0.0501) == "= 0.0501"
    assert p_text(0.049, 1) == "< 0.05"  # "0.05" at one digit
    assert p_text(0.5) == "= 0.500" and p_text(1.0) == "= 1.00"  # as many digits as p = 0.542 beside it
    verdict = Comparison(0.02, 2.5, 0.04996, True).verdict("a", "b")
    assert verdict == "a is better than b by 0.0200 (Welch's t-test p < 0.05)"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's "catastrophic cancellation" on identical runs stays off the terminal
        assert welch([0.1041, 0.1041], [0.0976, 0.1234]).p_value == pytest.approx(0.707, abs=1e-3)


def test_report_command_default_folder_and_output_dir(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    make_study(url)
    default = run("hpo.report", "--storage", url, cwd=tmp_path)
    assert default.returncode == 0, default.stderr
    assert "# Study cifar10" in default.stdout and "written to reports/cifar10/" in default.stdout
    chosen = run("hpo.report", "--storage", url, "--output-dir", "elsewhere/r", cwd=tmp_path)
    assert chosen.returncode == 0 and "written to elsewhere/r/" in chosen.stdout
    for folder in (tmp_path / "reports" / "cifar10", tmp_path / "elsewhere" / "r"):
        names = {p.name for p in folder.iterdir()}
        assert {"summary.md", "summary.html", "trials.csv", "curves.png"} <= names, folder
    (tmp_path / "a-file").write_text("")
    bad = run("hpo.report", "--storage", url, "--output-dir", "a-file/r", cwd=tmp_path)
    assert bad.returncode == 2 and "cannot write to a-file/r (Not a directory)" in bad.stderr
    assert "Traceback" not in bad.stderr
    (tmp_path / "blocked" / "trials.csv").mkdir(parents=True)  # the folder is writable, one of its files is not
    blocked = run("hpo.report", "--storage", url, "--output-dir", "blocked", cwd=tmp_path)
    assert (
        blocked.returncode == 2
        and blocked.stderr == "error: cannot write blocked/trials.csv (Is a directory): pass another --output-dir\n"
    )


def test_export_default_path_and_stdout(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = make_study(url)
    default = run("hpo.export", "--storage", url, cwd=tmp_path)
    assert default.returncode == 0, default.stderr
    path = tmp_path / "studies" / "cifar10-best.json"
    assert f"-> {path.relative_to(tmp_path)}" in default.stdout
    assert load_config(path) == trial_config(study.best_trial)
    printed = run("hpo.export", "--storage", url, "--output", "-", "--format", "yaml", cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    doc = yaml.safe_load(printed.stdout)
    assert doc["config"] == trial_config(study.best_trial).to_dict()
    assert doc["provenance"]["trial_number"] == study.best_trial.number
    assert sorted(p.name for p in (tmp_path / "studies").iterdir()) == ["cifar10-best.json"]  # - wrote no file


def test_export_document_redacts_the_storage_password(tmp_path):
    from hpo.export import export_document

    study = make_study(f"sqlite:///{tmp_path / 's.db'}")
    doc = export_document(study, study.best_trial, "postgresql+psycopg2://hpo:s3cret@dbhost:5432/hpo")
    assert doc["provenance"]["storage"] == "postgresql+psycopg2://hpo:***@dbhost:5432/hpo"
    assert "s3cret" not in dump(doc, "json") + dump(doc, "yaml")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "0"], "--seeds must be at least 1, got 0"),
        (["--epochs", "0"], "--epochs must be at least 1, got 0"),
        (["--train-subset", "-1"], "--train-subset must be at least 0, got -1"),
        (["--baseline", "b.json"], "--baseline compares against --config"),
    ],
)
def test_retrain_flags_are_checked_before_anything_is_loaded(tmp_path, monkeypatch, args, message):
    from hpo.errors import HpoError
    from hpo.retrain import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(HpoError, match=re.escape(message)):
        main(["--data-dir", "no-data", *args])
    assert list(tmp_path.iterdir()) == []  # no study file, no download


def test_export_to_an_unwritable_place_is_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    make_study(url)
    (tmp_path / "a-file").write_text("")
    proc = run("hpo.export", "--storage", url, "--output", "a-file/best.json", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: cannot write a-file/best.json")
    assert len(proc.stderr.strip().splitlines()) == 1


def _study_with_two_trials(url: str, configs: list[TrainConfig]) -> optuna.Study:
    """A study searched at widths 8/16/16, batch 16, 2 epochs, whose completed trials have these configs."""
    study = optuna.create_study(study_name="cifar10", storage=url, direction="maximize")
    size = {"epochs": 2, "widths": [8, 16, 16], "train_subset": 0, "batch_size": 16}
    study.set_user_attr("hpo_settings", size)
    for i, config in enumerate(configs):
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE,
                value=0.9 - 0.1 * i,
                params={"lr_decoupled": 1.0 + i},
                distributions={"lr_decoupled": FloatDistribution(0.5, 32, log=True)},
                user_attrs={"config": config.to_dict(), "epochs_run": 2},
            )
        )
    return study


@pytest.mark.parametrize(("recipe_acc", "answer"), [(0.30, "Yes"), (0.70, "No")])
def test_retrain_tests_the_best_against_the_recipe_and_says_if_the_search_beat_it(
    tmp_path, tiny_data_dir, monkeypatch, recipe_acc, answer
):
    import hpo.retrain
    from hpo.data import load_cifar10

    recipe = TrainConfig.recipe(batch_size=16, epochs=2, widths=(8, 16, 16))
    best, runner_up = recipe.replace(lr=0.5), recipe.replace(lr=0.4)
    accuracy = {0.5: 0.60, 0.4: 0.50, recipe.lr: recipe_acc}
    monkeypatch.setattr(
        hpo.retrain, "train", lambda config, *a, **k: _Result(accuracy[config.lr] + 0.002 * config.seed, fill=0.0)
    )
    study = _study_with_two_trials(f"sqlite:///{tmp_path / 's.db'}", [best, runner_up])
    candidates = hpo.retrain.study_candidates(study)
    assert [c.label for c in candidates] == ["best (trial 0)", "runner-up (trial 1)", "recipe (the defaults)"]
    assert candidates[2].config == recipe
    record = hpo.retrain.retrain(candidates, load_cifar10(tiny_data_dir, download=False), torch.device("cpu"), 3)
    assert [c["against"] for c in record["comparisons"]] == ["runner-up (trial 1)", "recipe (the defaults)"]
    assert hpo.retrain.defaults_verdict(record).startswith(f"{answer}: ")
    study.set_user_attr("retrain", record)
    text = write_report(study, tmp_path / "r")
    assert f"**Did the search beat the defaults?** {answer}: " in text
    assert text.count("**Verdict:**") == 2 and "| recipe (the defaults)" in text


def test_when_the_best_trial_is_the_recipe_it_is_not_retrained_twice(tmp_path):
    import hpo.retrain

    recipe = TrainConfig.recipe(batch_size=16, epochs=2, widths=(8, 16, 16))
    rounded = recipe.replace(seed=7, lr=recipe.lr * (1 + 1e-15))  # as it comes back from the decoupled units
    study = _study_with_two_trials(f"sqlite:///{tmp_path / 's.db'}", [rounded, recipe.replace(lr=0.4)])
    labels = [c.label for c in hpo.retrain.study_candidates(study)]
    assert labels == ["best (trial 0, the recipe)", "runner-up (trial 1)"]
    record = {"candidates": [{"label": labels[0]}], "comparisons": []}
    assert hpo.retrain.defaults_verdict(record) == "No: the best trial is the recipe itself (the trainer's defaults)."
    # the recipe as the runner-up: the best-vs-runner-up test is the answer
    study = _study_with_two_trials(f"sqlite:///{tmp_path / 't.db'}", [recipe.replace(lr=0.4), rounded])
    labels = [c.label for c in hpo.retrain.study_candidates(study)]
    assert labels == ["best (trial 0)", "runner-up (trial 1, the recipe)"]
    versus = {"against": labels[1], "significant": False, "difference": 0.01, "verdict": "no significant difference"}
    record = {"candidates": [{"label": labels[0]}, {"label": labels[1]}], "comparisons": [versus]}
    assert hpo.retrain.defaults_verdict(record) == "Not shown: no significant difference."


@pytest.mark.parametrize(
    ("difference", "significant", "answer"),
    [(-0.0108, True, "Yes"), (0.0108, True, "No"), (-0.0108, False, "Not shown"), (float("nan"), False, "Cannot tell")],
)
def test_when_the_best_trial_is_the_recipe_the_runner_up_answers_whether_the_search_beat_it(
    difference, significant, answer
):
    import hpo.retrain

    # README's GPU run 1: the recipe was the validation-best, the runner-up (found by the search) retrained better.
    p_value = float("nan") if math.isnan(difference) else (0.042 if significant else 0.3)
    versus = {"against": "runner-up (trial 5)", "difference": difference, "significant": significant}
    versus |= {"p_value": p_value, "verdict": "VERDICT"}
    record = {"candidates": [{"label": "best (trial 0, the recipe)"}, {"label": "runner-up (trial 5)"}]}
    verdict = hpo.retrain.defaults_verdict({**record, "comparisons": [versus]})
    assert verdict == f"{answer}: the best trial by validation accuracy is the recipe itself; retrained, VERDICT."


def test_anytime_curve_is_the_best_so_far_against_the_compute_spent(tmp_path):
    from hpo.report import anytime_curve

    study = make_study(f"sqlite:///{tmp_path / 's.db'}")
    worse = {"epochs_run": 3, "train_seconds": 6.0, "config": TINY_CONFIG.to_dict()}
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.01, user_attrs=worse))  # a late, bad trial
    trials = study.get_trials()
    curve = anytime_curve(trials)
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert list(curve["trial"]) == [t.number for t in finished]  # failed trials cost nothing recorded here
    assert list(curve["epochs"]) == list(pd.Series([t.user_attrs["epochs_run"] for t in finished]).cumsum())
    assert list(curve["seconds"]) == pytest.approx(
        list(pd.Series([2.0 * t.user_attrs["epochs_run"] for t in finished]).cumsum())
    )
    best, expected = float("-inf"), []
    for t in finished:
        if t.state.name == "COMPLETE":
            best = max(best, t.value)
        expected.append(best)
    assert list(curve["best"]) == expected and curve["best"].is_monotonic_increasing
    assert curve["best"].iloc[-1] == max(t.value for t in finished if t.state.name == "COMPLETE") > 0.01
    assert (tmp_path / "r").exists() is False
    write_report(study, tmp_path / "r")
    assert (tmp_path / "r" / "anytime.png").is_file()


def test_parallel_retrain_gives_the_runs_of_a_one_thread_serial_retrain(tmp_path, tiny_data_dir):
    import hpo.retrain
    from hpo.data import load_cifar10

    candidates = [
        hpo.retrain.Candidate("best (trial 1)", TINY_CONFIG.replace(lr=0.05), 1),
        hpo.retrain.Candidate("runner-up (trial 2)", TINY_CONFIG.replace(lr=0.2, dropout=0.1), 2),
    ]
    data = load_cifar10(tiny_data_dir, download=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each parallel run uses
    try:
        serial = hpo.retrain.retrain(candidates, data, torch.device("cpu"), 2, tmp_path / "serial", jobs=1)
    finally:
        torch.set_num_threads(threads)
    parallel = hpo.retrain.retrain(candidates, data, torch.device("cpu"), 2, tmp_path / "parallel", jobs=2)
    assert [c["test_acc"] for c in parallel["candidates"]] == [c["test_acc"] for c in serial["candidates"]]
    assert [c["label"] for c in parallel["candidates"]] == ["best (trial 1)", "runner-up (trial 2)"]
    assert parallel["winner"] == serial["winner"]
    saved = {k: torch.load(tmp_path / k / "model.pt", weights_only=True) for k in ("serial", "parallel")}
    assert all(torch.equal(saved["serial"][name], w) for name, w in saved["parallel"].items())


def test_accounting_shows_device_seconds_start_up_and_gpu_utilisation():
    from hpo.report import accounting_table

    def trials(device: str) -> list:
        attrs = [{"device_seconds": s, "device": device, "epochs_run": 2} for s in (2.0, 4.0)]
        return [create_trial(state=TrialState.COMPLETE, value=0.5, user_attrs=a) for a in attrs]

    run = {"search_seconds": 10.0, "devices": 1, "workers": 2, "finished": 2, "startup_seconds": 3.2}
    cpu = accounting_table(trials("cpu"), trials("cpu"), {"epochs": 2}, {**run, "gpu_utilisation": None})["value"]
    assert cpu["device-seconds per trial, mean (its own train call)"] == "3.0"
    assert cpu["device-seconds, total (all trials)"] == "6.0"
    assert cpu["device-seconds per finished trial, last run (search seconds x devices / trials)"] == "5.0"
    assert cpu["concurrent trials, last run (worker processes)"] == "2"
    assert cpu["start-up, last run: command to the first trial's first step (s)"] == "3.2"
    assert cpu["mean GPU utilisation, last run"] == "not measured: CPU run"
    gpu = accounting_table(trials("cuda"), trials("cuda"), {}, {**run, "devices": 2, "gpu_utilisation": 87.4})["value"]
    assert gpu["device-seconds per finished trial, last run (search seconds x devices / trials)"] == "10.0"
    assert gpu["mean GPU utilisation, last run"] == "87 %"


@pytest.mark.parametrize(
    ("samples", "said"),
    [
        (None, "not measured (no nvidia-smi)"),
        (0, "not measured: nvidia-smi gave no utilisation samples (it reports none for MIG devices)"),
        ("unrecorded", "not measured (no nvidia-smi, or no utilisation samples from it)"),  # an older last_run
    ],
    ids=["no-nvidia-smi", "no-samples", "unrecorded"],
)
def test_gpu_utilisation_not_measured_says_why(samples, said):
    from hpo.report import accounting_table

    trials = [create_trial(state=TrialState.COMPLETE, value=0.5, user_attrs={"device": "cuda"})]
    run = {"search_seconds": 10.0, "devices": 1, "finished": 1, "gpu_utilisation": None, "gpu_samples": samples}
    if samples == "unrecorded":
        del run["gpu_samples"]
    assert accounting_table(trials, trials, {}, run)["value"]["mean GPU utilisation, last run"] == said


def test_retrain_trains_in_parallel_only_on_a_cpu_and_only_runs_worth_a_process(tiny_data_dir):
    import os

    import hpo.retrain
    from hpo.data import load_cifar10

    data = load_cifar10(tiny_data_dir, download=False)  # 100 training images
    cores = len(os.sched_getaffinity(0))
    small = [hpo.retrain.Candidate("a", TINY_CONFIG.replace(epochs=2))]
    big = [hpo.retrain.Candidate("a", TINY_CONFIG.replace(epochs=hpo.retrain.MIN_PARALLEL_WORK // 100))]
    assert hpo.retrain.cpu_jobs(torch.device("cpu"), small, data) == 1
    assert hpo.retrain.cpu_jobs(torch.device("cpu"), big, data) == cores
    assert hpo.retrain.cpu_jobs(torch.device("cpu"), big, data, train_subset=50) == 1  # half the images
    assert hpo.retrain.cpu_jobs(torch.device("cuda"), big, data) == 1


def test_a_retrain_run_scores_the_test_set_once_after_its_last_epoch(tmp_path, tiny_data_dir, monkeypatch):
    import hpo.retrain
    import hpo.train
    from hpo.data import load_cifar10

    data = load_cifar10(tiny_data_dir, download=False)
    scored = []
    evaluate = hpo.train.evaluate
    monkeypatch.setattr(
        hpo.train, "evaluate", lambda m, split, *a, **k: scored.append(len(split)) or evaluate(m, split, *a, **k)
    )
    candidates = [hpo.retrain.Candidate("a", TINY_CONFIG.replace(epochs=3))]
    record = hpo.retrain.retrain(candidates, data, torch.device("cpu"), 2, tmp_path / "w", jobs=1)
    assert scored == [len(data.test)] * 2  # two seeds, one test-set score each
    assert all(0 <= acc <= 1 for acc in record["candidates"][0]["test_acc"])


def test_a_search_rerun_reuses_the_stored_retrain_only_when_it_covers_the_same_runs(
    tmp_path, tiny_data_dir, monkeypatch, capsys
):
    import hpo.retrain
    from hpo.data import Cifar10, Split, load_cifar10

    seeds = []

    def fake_train(config, *args, **kwargs):
        seeds.append(config.seed)
        return _Result(0.5 + 0.01 * config.seed, fill=0.0)

    monkeypatch.setattr(hpo.retrain, "train", fake_train)
    recipe = TrainConfig.recipe(batch_size=16, epochs=2, widths=(8, 16, 16))
    study = _study_with_two_trials(f"sqlite:///{tmp_path / 's.db'}", [recipe.replace(lr=0.5), recipe.replace(lr=0.4)])
    data = load_cifar10(tiny_data_dir, download=False)
    relabelled = Cifar10(data.train, Split(data.test.images, (data.test.labels + 1) % 10))
    cpu = torch.device("cpu")

    def runs(data=data, n_seeds=2, reuse=True) -> int:
        before = len(seeds)
        hpo.retrain.retrain_study(study, data, cpu, n_seeds, tmp_path, jobs=1, reuse=reuse)
        return len(seeds) - before

    assert runs() == 6  # best, runner-up and the recipe, 2 seeds each
    stored = study.user_attrs["retrain"]
    capsys.readouterr()
    assert runs() == 0 and study.user_attrs["retrain"] == stored  # the same runs: reused
    shown = capsys.readouterr().out  # and its results shown again
    assert all(f"retrain {c['label']}: test accuracy {c['text']}" in shown for c in stored["candidates"])
    assert all(f"retrain verdict: {c['verdict']}" in shown for c in stored["comparisons"])
    assert runs(reuse=False) == 6  # python -m hpo.retrain always trains
    # A retrain stored before the weights folder was renamed from <study>-best: still reused.
    (tmp_path / "cifar10-winner").rename(tmp_path / "cifar10-best")
    legacy = study.user_attrs["retrain"] | {"weights": str(tmp_path / "cifar10-best" / "model.pt")}
    study.set_user_attr("retrain", legacy)
    assert runs() == 0
    assert runs(reuse=False) == 6  # and trained anew, it saves into <study>-winner
    assert runs(data=relabelled) == 6 and runs() == 6  # other data, then back
    (tmp_path / "cifar10-winner" / "model.pt").unlink()
    assert runs() == 6  # the weights are gone
    assert runs(n_seeds=3) == 9
    record, candidates = study.user_attrs["retrain"], hpo.retrain.study_candidates(study)
    weights = tmp_path / "cifar10-winner" / "model.pt"
    assert hpo.retrain.covers(record, candidates, 3, data, cpu, weights)
    assert not hpo.retrain.covers(record, candidates, 3, data, torch.device("cuda"), weights)
    assert not hpo.retrain.covers(record, candidates[:2], 3, data, cpu, weights)
    assert not hpo.retrain.covers({k: v for k, v in record.items() if k != "data"}, candidates, 3, data, cpu, weights)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "model.pt").write_bytes(weights.read_bytes())
    assert not hpo.retrain.covers(record, candidates, 3, data, cpu, tmp_path / "elsewhere" / "model.pt")


def test_export_of_a_chosen_trial_is_named_after_it_not_best(tmp_path, monkeypatch):
    from hpo.export import main

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = make_study(url)
    assert study.best_trial.number != 1
    monkeypatch.chdir(tmp_path)
    assert main(["--storage", url, "--trial", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "studies").iterdir()) == ["cifar10-trial1.json"]


def test_a_pruned_trial_is_never_ranked_even_with_a_higher_value():
    # Its value is an earlier epoch's accuracy: it must never be exported or retrained as the best.
    from hpo.export import ranked_trials

    study = optuna.create_study(direction="maximize")
    config = TrainConfig().to_dict()
    for state, value in ((TrialState.COMPLETE, 0.5), (TrialState.PRUNED, 0.9), (TrialState.COMPLETE, 0.6)):
        trial = create_trial(
            state=state,
            value=value,
            params={"x": value},
            distributions={"x": FloatDistribution(0, 1)},
            intermediate_values={1: value},
            user_attrs={"config": config},
        )
        study.add_trial(trial)
    assert [t.number for t in ranked_trials(study)] == [2, 0]


def test_a_missing_value_reads_n_a_in_both_tables_and_numbers_print_alike():
    from hpo.report import table_text

    table = pd.DataFrame({"count": [1, 3], "std": [float("nan"), 0.0123], "eps": [1e-12, 5e-4]}, index=["a", "b"])
    markdown, html = table_text(table, "pipe"), table_text(table, "html")
    assert "nan" not in markdown.lower() + html.lower()
    assert markdown.count("n/a") == html.count("n/a") == 1
    assert all(number in markdown and number in html for number in ("1e-12", "0.0005", "0.0123"))


def test_the_report_states_the_search_settings_and_space(tmp_path):
    study = make_study(f"sqlite:///{tmp_path / 's.db'}")
    space = {"lr_decoupled": {"low": 8.0, "high": 128.0, "log": True}, "augmentation": "flip", "scheduler": None}
    settings = {"n_trials": 8, "epochs": 3, "widths": [8, 16, 16], "train_subset": 0, "sampler": "gp"}
    study.set_user_attr("hpo_settings", {**settings, "pruner": "median", "space": space})
    markdown = write_report(study, tmp_path / "r")
    section = markdown.split("## Search settings")[1].split("\n## ")[0]
    for row in ("| sampler | gp", "| pruner | median", "| widths | 8/16/16", "| train_subset | all"):
        assert row in " ".join(section.split()), row
    assert "| lr_decoupled | 8 … 128, log" in " ".join(section.split())
    assert "| augmentation | fixed: flip" in " ".join(section.split())
    assert "momentum | 0.7 … 0.92" in " ".join(section.split())  # a default range the file left as it is
    assert "scheduler" not in section  # dropped by the space file: the recipe's value
    study.set_user_attr("hpo_settings", {})
    assert "## Search settings" not in write_report(study, tmp_path / "r2")


def test_importances_leave_out_a_parameter_that_never_varied_and_few_trials_are_flagged(tmp_path):
    constant = optuna.create_study(study_name="c", storage=f"sqlite:///{tmp_path / 'c.db'}", direction="maximize")
    dists = {"lr_decoupled": FloatDistribution(0.5, 32, log=True), "augmentation": CategoricalDistribution(["flip"])}
    for i in range(6):
        params = {"lr_decoupled": 1.0 + i, "augmentation": "flip"}
        attrs = {"config": TINY_CONFIG.to_dict(), "epochs_run": 1}
        constant.add_trial(create_trial(value=0.1 + 0.01 * i, params=params, distributions=dists, user_attrs=attrs))
    markdown = write_report(constant, tmp_path / "r")
    section = markdown.split("## Parameter importances")[1].split("\n## ")[0]
    assert "fANOVA over the 6 completed trials (augmentation: one value in all of them, left out)" in section
    assert "with under 10, a rough indication at best" in section
    assert "| augmentation" not in section and "| lr_decoupled" in section
    assert "Trial 5: validation accuracy **0.1500** after 1 epoch (" in markdown  # not "1 epochs"


def test_the_validation_curves_have_whole_epochs_on_their_axis(tmp_path):
    from hpo.report import validation_curves

    study = make_study(f"sqlite:///{tmp_path / 's.db'}", n=3)  # curves of 1 to 3 epochs
    fig = validation_curves(study.get_trials(deepcopy=False))
    fig.canvas.draw()
    ticks = fig.axes[0].get_xticks()
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks


def test_an_exported_config_is_retrained_under_its_study_and_trial_not_its_file_name(
    tmp_path, tiny_data_dir, monkeypatch
):
    from hpo.retrain import config_name, main

    monkeypatch.chdir(tmp_path)
    for study_name, trial in (("first", 3), ("second", 7)):  # each study's report has a best-config.json
        folder = tmp_path / "reports" / study_name
        folder.mkdir(parents=True)
        document = {"config": TINY_CONFIG.to_dict(), "provenance": {"study_name": study_name, "trial_number": trial}}
        (folder / "best-config.json").write_text(json.dumps(document))
        assert config_name(folder / "best-config.json") == f"{study_name}-trial{trial}"
    unusable = {"config": TINY_CONFIG.to_dict(), "provenance": {"study_name": "../up", "trial_number": 1}}
    (tmp_path / "odd.json").write_text(json.dumps(unusable))
    assert config_name(tmp_path / "odd.json") == "odd"  # a name that cannot name a folder: the file's stem
    winner = {"config": TINY_CONFIG.to_dict(), "provenance": {"label": "best (trial 3)", "trial_number": 3}}
    (tmp_path / "config.json").write_text(json.dumps(winner))  # as save_weights writes it: no study name
    assert config_name(tmp_path / "config.json") == "config"
    output = tmp_path / "r.json"
    args = ["--config", str(tmp_path / "reports" / "first" / "best-config.json"), "--seeds", "1", "--epochs", "1"]
    assert main([*args, "--data-dir", str(tiny_data_dir), "--device", "cpu", "--output", str(output)]) == 0
    record = json.loads(output.read_text())
    assert record["candidates"][0]["label"] == "config first-trial3"
    assert record["weights"] == "studies/first-trial3-retrain/model.pt"
