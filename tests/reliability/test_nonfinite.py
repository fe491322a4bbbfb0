"""NaN/inf in training stops the run with a message naming the layer, before any parameter is overwritten."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from bb_lightning.errors import NonFiniteError
from bb_lightning.plugin.state import get_state
from bb_lightning.methods.bayesian_bits import BayesianBitsConfig, BayesianBitsQuantizer
from reliability.common import digits, tiny_module, trainer
from reliability.methods import METHODS

pytestmark = pytest.mark.lightning_fit


class AtStep(pl.Callback):
    """Run ``fn(module)`` at the start of global step 1 and snapshot the parameters right after."""

    def __init__(self, fn) -> None:
        self.fn, self.params = fn, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == 1 and self.params is None:
            self.fn(module)
            self.params = {n: p.detach().clone() for n, p in module.named_parameters()}


def _fit_until_error(tmp_path, method, fn, data=None, **cb_kwargs):
    module, probe = tiny_module(), AtStep(fn)
    t = trainer(tmp_path, [METHODS[method](**cb_kwargs), probe], limit_train_batches=4)
    with pytest.raises(NonFiniteError) as err:
        t.fit(module, datamodule=data or digits())
    assert t.global_step == 1, "the run went on past the bad step"
    for n, p in module.named_parameters():  # no optimizer step wrote NaN/inf into anything
        assert torch.equal(p.detach(), probe.params[n]), n
    return str(err.value)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_non_finite_parameter_is_named(tmp_path, method):
    def poison(module):
        with torch.no_grad():
            module.model.layer2[0].conv2.weight[0, 0, 0, 0] = float("inf")

    msg = _fit_until_error(tmp_path, method, poison)
    assert "parameter `layer2.0.conv2.weight`" in msg and "step 1" in msg


@pytest.mark.parametrize("method", sorted(METHODS))
def test_non_finite_gradient_with_finite_loss_is_named(tmp_path, method):
    # a backward that returns NaN (like torch's bf16 CPU convolution backward on 1x1 maps): the loss is finite
    def nan_backward(module):
        q = get_state(module).modules["layer1.0.conv2"].weight_quantizer
        def hook(mod, args, out):
            out.register_hook(lambda g: g * float("nan"))

        q.register_forward_hook(hook)

    msg = _fit_until_error(tmp_path, method, nan_backward)
    assert "gradient of `layer1.0.conv2.weight`" in msg


@pytest.mark.parametrize("method", sorted(METHODS))
def test_non_finite_layer_output_is_named(tmp_path, method):
    def blow_up(module):  # finite weights whose output overflows float32, in a layer left float
        with torch.no_grad():
            module.model.fc.weight.fill_(3e38)

    msg = _fit_until_error(tmp_path, method, blow_up, exclude=["fc"])
    assert "output of layer `fc` (Linear)" in msg


@pytest.mark.parametrize("method", sorted(METHODS))
def test_non_finite_input_batch_is_named(tmp_path, method):
    class BadDigits(pl.LightningDataModule):
        def train_dataloader(self):
            x = torch.randn(96, 1, 16, 16)
            x[40, 0, 3, 3] = float("nan")  # in the second batch of 32
            return DataLoader(TensorDataset(x, torch.randint(0, 10, (96,))), batch_size=32)

    msg = _fit_until_error(tmp_path, method, lambda m: None, data=BadDigits())
    assert "the input batch contains NaN/inf" in msg


def test_nan_gates_raise_a_clear_error_in_the_quantizer():
    q = BayesianBitsQuantizer(BayesianBitsConfig(), "weight", num_channels=4)
    q.init_range(torch.randn(4, 3))
    with torch.no_grad():
        q.log_alpha[1] = float("nan")
    with pytest.raises(NonFiniteError, match="log_alpha"):
        q(torch.randn(4, 3))
