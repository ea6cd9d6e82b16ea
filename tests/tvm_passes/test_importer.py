"""Phase 1: the import keeps the link from parameter inputs to PyTorch FQNs, and refuses clearly."""

from __future__ import annotations

import pytest
import torch

from mest.models import build_model
from tvm_passes.errors import UnsupportedModelError
from tvm_passes.importer import import_model


def test_every_parameter_input_has_its_fqn():
    model = build_model("tiny", 10, 1)
    imported = import_model(model, (1, 1, 8, 8))
    names = [p.name for p in imported.mod["main"].params[1:]]
    assert set(imported.param_fqns) == set(names) == set(imported.params)
    assert sorted(imported.param_fqns.values()) == sorted(name for name, _ in model.named_parameters())
    for name, fqn in imported.param_fqns.items():
        assert imported.params[name].shape == tuple(model.get_parameter(fqn).shape)


class _Fft(torch.nn.Module):
    def forward(self, x):
        return torch.fft.fft2(x).real


def test_an_operator_the_frontend_lacks_is_one_line_error():
    with pytest.raises(UnsupportedModelError) as info:
        import_model(_Fft(), (1, 1, 4, 4))
    message = str(info.value)
    assert "\n" not in message and "Relax frontend cannot import" in message and "fft" in message


def test_train_mode_import_says_which_statistics_each_batch_norm_reads():
    model = build_model("tiny", 10, 1).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    imported = import_model(model, (2, 1, 8, 8), train=True)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    bns = {imported.param_fqns[gamma]: buffers for gamma, buffers in imported.batch_norms.items()}
    expected = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert set(bns) == expected
    for gamma, buffers in bns.items():
        prefix = gamma[: -len(".weight")]
        assert (buffers.running_mean, buffers.running_var, buffers.num_batches_tracked) == (
            f"{prefix}.running_mean", f"{prefix}.running_var", f"{prefix}.num_batches_tracked")
    assert "training=True" in imported.mod.script(show_meta=False)
