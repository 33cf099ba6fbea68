import pytest
import torch

from hpo.config import TrainConfig
from hpo.model import build_model


@pytest.mark.parametrize("widths", [(8, 16, 16), (16, 32, 64), (64, 256, 256)])
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_forward_gives_ten_logits_per_image(widths, dropout):
    model = build_model(TrainConfig(widths=widths, dropout=dropout))
    out = model(torch.randn(5, 3, 32, 32))
    assert out.shape == (5, 10)


def test_dropout_is_active_in_train_mode_only():
    model = build_model(TrainConfig(widths=(8, 16, 16), dropout=0.9))
    x = torch.randn(8, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_widths_change_the_parameter_count():
    small = sum(p.numel() for p in build_model(TrainConfig(widths=(8, 16, 16))).parameters())
    big = sum(p.numel() for p in build_model(TrainConfig(widths=(16, 32, 64))).parameters())
    assert big > small
