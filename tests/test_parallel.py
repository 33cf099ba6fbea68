"""Jobs in child processes: results in order, and no child outlives or delays a stopped command."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpo.config import TrainConfig
from hpo.parallel import ChildTraceback, map_in_processes
from tests.conftest import REPO
from tests.procutil import children_running, fail, gone_within, interrupt_myself, value_and_pid

# A command whose jobs would run for 10 minutes: a stopped command must not wait for them.
COMMAND = """
import sys
from hpo.errors import run_cli
from hpo.parallel import ChildTraceback, map_in_processes
from tests.procutil import record_pid_and_sleep
run_cli(lambda: len(list(map_in_processes(record_pid_and_sleep, [(sys.argv[1], 600)] * 4, 2))))
"""


@pytest.fixture(autouse=True)
def no_hang():
    """A test that waits for ever fails after a minute instead (in this process: the pool under test hangs it)."""

    def expire(signum, frame):
        pytest.fail("still waiting after 60 s")  # not TimeoutError: multiprocessing swallows OSErrors in a wait

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def start(args: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        args,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,  # its own process group, as a terminal's job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as at a terminal, even under `cmd &`
        **kwargs,
    )


def test_results_come_back_in_task_order_from_other_processes():
    tasks = [(0.8, "a"), (0.0, "b"), (0.3, "c")]  # "b" and "c" finish before "a"
    results = list(map_in_processes(value_and_pid, tasks, 2))
    assert [value for value, _ in results] == ["a", "b", "c"]
    assert os.getpid() not in {pid for _, pid in results}


def test_a_child_with_no_job_left_exits_before_the_caller_drops_the_results():
    outcomes = map_in_processes(value_and_pid, [(0.0, "a"), (0.0, "b"), (0.0, "c")], 2)
    pids = [pid for _, pid in (next(outcomes), next(outcomes), next(outcomes))]
    assert gone_within(pids, 10) == []  # the generator is still open: it has not cleaned up yet
    assert list(outcomes) == []


def test_a_child_leaves_ctrl_c_to_the_command():
    # The command stops its children itself; a child's own KeyboardInterrupt would only print a traceback.
    assert list(map_in_processes(interrupt_myself, [()], 1)) == ["ignored"]


def test_an_error_in_a_job_is_raised_here_with_the_childs_traceback():
    with pytest.raises(ValueError, match="bad config") as caught:
        list(map_in_processes(fail, [("bad config",)], 1))
    assert isinstance(caught.value.__cause__, ChildTraceback) and "in fail" in str(caught.value.__cause__)


def test_a_child_that_dies_is_an_error_not_a_hang(tmp_path):
    # multiprocessing.Pool would wait for ever for the dead child's result; run it in a process that can time out.
    code = "from hpo.parallel import map_in_processes; from tests.procutil import die_abruptly\n"
    code += "list(map_in_processes(die_abruptly, [()] * 3, 2))"
    proc = start([sys.executable, "-c", code], tmp_path, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "ChildDied" in err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", ["Ctrl-C", "SIGTERM", "SIGKILL"])
def test_a_stopped_command_stops_its_children_at_once(tmp_path, how):
    # Ctrl-C reaches the whole process group; SIGTERM (kill, a job scheduler) and SIGKILL only the command. Before,
    # a Ctrl-C waited for every queued job and a killed command left its children training.
    proc = start([sys.executable, "-c", COMMAND, str(tmp_path)], tmp_path, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while len(list(tmp_path.iterdir())) < 2:
        assert time.time() < deadline and proc.poll() is None, "the jobs never started"
        time.sleep(0.1)
    children = [int(p.name) for p in tmp_path.iterdir()]
    {"Ctrl-C": lambda: os.killpg(proc.pid, signal.SIGINT), "SIGTERM": proc.terminate, "SIGKILL": proc.kill}[how]()
    proc.wait(timeout=30)
    assert gone_within(children, 10) == []
    err = proc.stderr.read()
    if how != "SIGKILL":
        assert proc.returncode == 130 and err.strip() == "interrupted", err  # one line: no child's traceback


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_terminated_retrain_stops_its_runs(tiny_data_dir, tmp_path):
    config = tmp_path / "long.json"
    config.write_text(json.dumps(TrainConfig(epochs=1000, widths=(8, 8, 8), batch_size=8).to_dict()))
    args = ["--config", str(config), "--data-dir", str(tiny_data_dir), "--seeds", "2", "--jobs", "2"]
    proc = start([sys.executable, "-m", "hpo.retrain", *args], tmp_path, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while len(children := children_running("spawn_main", proc.pid)) < 2:  # not the resource tracker
        assert time.time() < deadline and proc.poll() is None, "the retrain never started its runs"
        time.sleep(0.1)
    proc.terminate()
    proc.wait(timeout=30)
    assert gone_within(children, 10) == []
    assert proc.returncode == 130 and proc.stderr.read().strip() == "interrupted"
