import pytest
import torch

from hpo.config import TrainConfig
from hpo.schedule import build_scheduler


def curve(scheduler_name: str, steps: int = 100, lr: float = 1.0, **kw) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)
    sched = build_scheduler(opt, TrainConfig(lr=lr, scheduler=scheduler_name, **kw), steps)
    values = [opt.param_groups[0]["lr"]]
    for _ in range(steps):
        opt.step()
        sched.step()
        values.append(opt.param_groups[0]["lr"])
    return values


def test_constant():
    assert set(curve("constant")) == {1.0}


def test_step_drops_tenfold_each_third():
    v = curve("step", steps=90)
    assert v[0] == 1.0 and v[29] == 1.0
    assert v[30] == pytest.approx(0.1) and v[60] == pytest.approx(0.01) and v[90] == pytest.approx(0.001)
    # When the steps do not divide by 3, the run still trains at three levels (no fourth drop at its last step).
    assert {round(lr, 9) for lr in curve("step", steps=100)[:100]} == {1.0, 0.1, 0.01}


def test_cosine_goes_from_peak_to_zero():
    v = curve("cosine")
    assert v[0] == 1.0 and v[50] == pytest.approx(0.5) and v[-1] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("final", [0.0, 0.07])
def test_onecycle_warms_up_to_peak_then_decays_linearly_to_the_final_fraction(final):
    v = curve("onecycle", steps=100, warmup_fraction=0.25, final_lr_fraction=final)
    assert v[0] == pytest.approx(0.2)
    peak = max(range(len(v)), key=v.__getitem__)
    assert v[peak] == pytest.approx(1.0) and 24 <= peak <= 26
    assert v[-1] == pytest.approx(final, abs=1e-9)
    assert v[(peak + 100) // 2] == pytest.approx((1 + final) / 2, abs=0.02)  # linear in between
    assert all(a <= b for a, b in zip(v[:peak], v[1 : peak + 1]))
    assert all(a >= b for a, b in zip(v[peak:], v[peak + 1 :]))


def test_onecycle_without_warmup_starts_at_the_peak():
    v = curve("onecycle", steps=100, warmup_fraction=0.0, final_lr_fraction=0.0)
    assert v[0] == 1.0 and v[50] == pytest.approx(0.5) and v[-1] == pytest.approx(0.0, abs=1e-9)


def test_exponential_ends_at_one_percent():
    v = curve("exponential", lr=2.0)
    assert v[0] == 2.0 and v[-1] == pytest.approx(0.02)
    assert all(a > b for a, b in zip(v, v[1:]))


def test_onecycle_keeps_momentum_fixed():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0, momentum=0.85)
    sched = build_scheduler(opt, TrainConfig(scheduler="onecycle"), 10)
    for _ in range(10):
        opt.step()
        sched.step()
        assert opt.param_groups[0]["momentum"] == 0.85
