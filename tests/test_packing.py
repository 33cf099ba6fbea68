"""Trials per GPU from free memory, the GPU utilisation sampler and the run's accounting, all without a GPU."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from hpo.accounting import GpuUtilisation
from hpo.packing import CONTEXT_BYTES, GIB, choose_trials_per_gpu


@pytest.mark.parametrize(
    ("free", "peak", "data", "k"),
    [
        (78 * GIB, GIB // 2, GIB // 5, 4),  # an idle H100 and a small net: capped at 4
        (8 * GIB, GIB, 0, 3),  # 7.2 usable / (1.5 + 0.59) per trial
        (3 * GIB, GIB, GIB // 5, 1),
        (GIB // 10, GIB, 0, 1),  # nothing fits: still one trial (as without packing)
    ],
)
def test_trials_per_gpu_is_what_fits_in_free_memory_between_1_and_4(free, peak, data, k):
    chosen, why = choose_trials_per_gpu(free, peak, data)
    assert chosen == k
    assert f"{free / GIB:.1f} GiB free" in why and ("capped at 4" in why) == (k == 4)
    per_trial = peak * 1.5 + data + CONTEXT_BYTES
    assert f"{per_trial / GIB:.2f} GiB per trial" in why


def test_the_measured_run_augments_a_whole_chunk_as_training_does(monkeypatch):
    import torch

    import hpo.packing
    from hpo.config import TrainConfig

    runs = []
    monkeypatch.setattr(hpo.packing, "train", lambda config, data, eval_data, device: runs.append((config, len(data))))
    for name in ("reset_peak_memory_stats", "synchronize"):
        monkeypatch.setattr(torch.cuda, name, lambda device: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 1000)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 5000)
    assert hpo.packing.measure_trial_peak(TrainConfig(batch_size=512), torch.device("cuda")) == 4000
    ((config, images),) = runs
    assert images == 8192 and config.batch_size == 512 and config.epochs == 1  # 16 steps: one chunk's augmentation


def test_gpu_utilisation_is_the_mean_of_the_samples():
    fake = GpuUtilisation([sys.executable, "-c", "print(50); print('[N/A]'); print(70)"])
    assert fake.start()
    fake._proc.wait()  # the fake prints its samples and ends
    assert fake.stop() == pytest.approx(60.0)
    missing = GpuUtilisation(["no-such-nvidia-smi"])
    assert missing.start() is False and missing.stop() is None


def test_process_start_time_is_when_the_process_started():
    # A fresh process that sleeps before asking: the answer counts the sleep (and the interpreter's start).
    code = "import time; time.sleep(1); from hpo.accounting import process_start_time as s; print(time.time() - s())"
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 1.0 <= age < 30


def test_worker_count_on_gpus_is_k_per_gpu_from_memory_unless_given(monkeypatch, capsys):
    import torch

    import hpo.search
    from hpo.search import _visible_gpus, _worker_count, build_parser
    from tests.test_search import settings

    measured = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (78 * GIB, 80 * GIB))
    monkeypatch.setattr(hpo.search, "measure_trial_peak", lambda config, device: measured.append(config) or GIB // 2)
    cuda = torch.device("cuda")
    space = {"batch_size": {"choices": [256, 1024]}, "augmentation": {"choices": ["flip", "trivial_augment"]}}

    def count(*flags: str) -> int:
        return _worker_count(build_parser().parse_args(list(flags)), cuda, settings(space=space), GIB // 5)

    assert count() == 8  # auto: 4 per GPU (capped) x 2 GPUs
    # measured at the largest batch the space may sample, with the augmentation that needs the most memory
    assert measured[0].batch_size == 1024 and measured[0].augmentation == "trivial_augment"
    assert "packing: 4 concurrent trials per GPU x 2 GPU(s) = 8 worker processes (auto: 78.0 GiB free" in (
        capsys.readouterr().out
    )
    assert count("--trials-per-gpu", "3") == 6 and count("--workers", "5") == 5 and len(measured) == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert _visible_gpus() == ["2", "3"]  # workers are dealt the GPUs this process was given
    space = {"augmentation": {"choices": ["flip", "flip_translate_cutout"]}}
    count()
    assert measured[-1].augmentation == settings().base_config().augmentation  # no trivial_augment to sample
    space = {"augmentation": "trivial_augment", "batch_size": 768}  # fixed values count too
    count()
    assert (measured[-1].augmentation, measured[-1].batch_size) == ("trivial_augment", 768)


def test_the_pool_starts_workers_1_to_k_minus_1_beside_this_process(monkeypatch):
    import subprocess

    import torch

    import hpo.search
    from hpo.search import COUNT_ENV, WorkerPool

    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda command, env: started.append((command, env)))
    monkeypatch.setattr(hpo.search, "_visible_gpus", lambda: ["2", "3"])
    pool = WorkerPool(["--n-trials", "9", "--storage", "sqlite:///secret.db"], {"X": "1"}, torch.device("cuda"))
    pool.start(3)  # 4 processes in all: this one is worker 0, on the first visible GPU ("2")
    assert [command[-2:] for command, _ in started] == [
        ["--worker-id", "1"],
        ["--worker-id", "2"],
        ["--worker-id", "3"],
    ]
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in started] == ["3", "2", "3"]
    assert {env[COUNT_ENV] for _, env in started} == {"4"} and all(env["X"] == "1" for _, env in started)
    assert all("--storage" not in command and "--n-trials" in command for command, _ in started)


class FinishedWorker:
    """A started worker process that has already exited with code 0."""

    def poll(self) -> int:
        return 0

    def wait(self) -> int:
        return 0


class FakeGpus:
    """``hpo.search.main`` on a machine with ``count`` (mocked) GPUs: no worker process, trial or sampler runs, and
    what the search would have started is recorded."""

    def __init__(self, monkeypatch, count: int, nvidia_smi: list[str] | None = None) -> None:
        import torch

        import hpo.search
        from hpo.data import Split

        self.nvidia_smi = nvidia_smi or ["no-such-nvidia-smi"]
        self.samplers: list[list[str]] = []
        self.measured: list = []
        self.started: list[dict] = []
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (78 * GIB, 80 * GIB))
        monkeypatch.setattr(Split, "to", lambda self, device: self)
        monkeypatch.setattr(hpo.search, "measure_trial_peak", lambda config, device: self.measured.append(1) or GIB)
        monkeypatch.setattr(hpo.search, "GpuUtilisation", self._sampler)
        monkeypatch.setattr(hpo.search, "Objective", lambda **kwargs: None)
        monkeypatch.setattr(hpo.search, "run_worker", lambda *args, **kwargs: 0)
        # the worker processes only: a sampler's (fake) nvidia-smi runs for real
        monkeypatch.setattr(hpo.search, "subprocess", SimpleNamespace(Popen=self._popen))

    def _sampler(self, command: list[str] | None = None, gpus: list[str] | None = None) -> GpuUtilisation:
        self.samplers.append(gpus)
        return GpuUtilisation(self.nvidia_smi)

    def _popen(self, command: list[str], env: dict) -> FinishedWorker:
        self.started.append(env)
        return FinishedWorker()

    def search(self, folder, data_dir, *flags: str) -> dict:
        """Run the search (a new study in ``folder``: the mocked workers finish no trial) with ``flags`` and return
        its ``last_run`` accounting."""
        import optuna

        import hpo.search

        folder.mkdir()
        url = f"sqlite:///{folder / 's.db'}"
        argv = ["--storage", url, "--data-dir", str(data_dir), "--device", "cuda", "--no-retrain", "--epochs", "1"]
        assert hpo.search.main([*argv, *flags]) == 0
        return optuna.load_study(study_name="cifar10", storage=url).user_attrs["last_run"]


def test_a_run_on_fewer_gpus_than_the_machine_has_counts_and_samples_only_those(tmp_path, tiny_data_dir, monkeypatch):
    gpus = FakeGpus(monkeypatch, 8)
    run = gpus.search(tmp_path / "a", tiny_data_dir, "--n-trials", "9", "--workers", "2")
    assert (run["workers"], run["devices"]) == (2, 2)  # device-seconds per trial: search seconds x 2, not x 8
    assert gpus.samplers == [["0", "1"]] and [env["CUDA_VISIBLE_DEVICES"] for env in gpus.started] == ["1"]
    # --trials-per-gpu 1 asks for 8 workers; 3 trials to run take 3 of them, on 3 GPUs
    run = gpus.search(tmp_path / "b", tiny_data_dir, "--n-trials", "3", "--trials-per-gpu", "1")
    assert (run["workers"], run["devices"]) == (3, 3) and gpus.samplers[-1] == ["0", "1", "2"]
    # more workers than GPUs: every GPU is used
    run = gpus.search(tmp_path / "c", tiny_data_dir, "--n-trials", "30", "--trials-per-gpu", "2")
    assert (run["workers"], run["devices"]) == (16, 8) and gpus.samplers[-1] == [str(i) for i in range(8)]


def test_the_sampler_asks_nvidia_smi_for_the_gpus_in_use_only():
    assert GpuUtilisation(gpus=["0", "3"]).command[-1] == "--id=0,3"
    assert not any(arg.startswith("--id") for arg in GpuUtilisation().command)  # unknown: every GPU


def test_gpus_named_by_uuid_are_sampled_by_uuid():
    # CUDA_VISIBLE_DEVICES may name GPUs (or MIG devices) by UUID; nvidia-smi --id takes those as well.
    assert GpuUtilisation(gpus=["GPU-8932f937-d72c", "GPU-0d1a"]).command[-1] == "--id=GPU-8932f937-d72c,GPU-0d1a"
    assert GpuUtilisation(gpus=["MIG-4a2b"]).command[-1] == "--id=MIG-4a2b"


def test_a_sampler_without_numeric_samples_is_recorded_as_such(tmp_path, tiny_data_dir, monkeypatch):
    gpus = FakeGpus(monkeypatch, 1, nvidia_smi=[sys.executable, "-c", "print('[N/A]')"])  # as for a MIG device
    run = gpus.search(tmp_path / "a", tiny_data_dir, "--n-trials", "1")
    assert (run["gpu_utilisation"], run["gpu_samples"]) == (None, 0)
    run = FakeGpus(monkeypatch, 1).search(tmp_path / "b", tiny_data_dir, "--n-trials", "1")  # no nvidia-smi
    assert (run["gpu_utilisation"], run["gpu_samples"]) == (None, None)


def test_one_trial_left_on_gpus_measures_nothing_and_runs_one_worker(tmp_path, tiny_data_dir, monkeypatch, capsys):
    gpus = FakeGpus(monkeypatch, 8)
    run = gpus.search(tmp_path / "a", tiny_data_dir, "--n-trials", "1")
    out = capsys.readouterr().out
    assert gpus.measured == [] and "packing:" not in out  # no CUDA context and autotuned step for one trial
    assert "1 trial(s) left to run: 1 worker process(es)" in out and (run["workers"], run["devices"]) == (1, 1)
    run = gpus.search(tmp_path / "b", tiny_data_dir, "--n-trials", "2")  # two: measured and packed as before
    out = capsys.readouterr().out
    assert len(gpus.measured) == 1 and "packing: 4 concurrent trials per GPU x 8 GPU(s) = 32 worker" in out
    assert "2 trial(s) left to run: 2 worker process(es)" in out and (run["workers"], run["devices"]) == (2, 2)
