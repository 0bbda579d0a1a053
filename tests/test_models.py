"""Every registered model: shapes, gradients, ONNX parity, GroupNorm variant; resnet1d18's budget."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from resnet1d import create_model, list_models

# Small widths keep the parametrised tests fast; the budget test uses the defaults.
SMALL = {
    "resnet1d18": {"widths": [8, 16, 24, 32]},
    "se_resnet1d18": {"widths": [8, 16, 24, 32]},
    "resnet1d34": {"widths": [8, 16, 24, 32]},
    "alexnet1d": {"width": 8, "hidden": 32},
    "squeezenet1d": {"width": 4},
    "rnn_attention": {"width": 16, "hidden": 16},
}
# ONNX Runtime and torch run the same float32 graph with different kernels: 1e-4 absolute on logits
# of order 1 is a few ulps of accumulated rounding, far below any decision difference.
ONNX_ATOL = 1e-4


def small(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, **SMALL.get(name, {}), **kw)


def test_every_model_has_small_settings():
    assert set(SMALL) == set(list_models())


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("length", [500, 1250, 2500])
def test_output_shape_and_finite(name, length):
    model = small(name).eval()
    y = model(torch.randn(3, 12, length))
    assert y.shape == (3, 6)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", list_models())
def test_num_classes_and_leads(name):
    model = small(name, num_classes=9, in_leads=2).eval()
    assert model(torch.randn(2, 2, 1000)).shape == (2, 9)
    with pytest.raises(ValueError, match="expected input"):
        model(torch.randn(2, 12, 1000))


@pytest.mark.parametrize("name", list_models())
def test_gradients_reach_every_parameter(name):
    model = small(name).train()
    model(torch.randn(4, 12, 1000)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", list_models())
def test_onnx_export_dynamic_batch_matches_torch(name, tmp_path):
    model = small(name).eval()
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(
        model, (torch.randn(2, 12, 1000),), str(path), dynamo=False, input_names=["ecg"], output_names=["logits"],
        dynamic_axes={"ecg": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
    )
    x = torch.randn(3, 12, 1000)  # another batch size than the example
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"ecg": x.numpy()})
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(out, ref, atol=ONNX_ATOL, rtol=0)


@pytest.mark.parametrize("name", list_models())
def test_groupnorm_variant(name):
    model = small(name, norm_layer="group")
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    model.train()
    # GroupNorm normalises each sample alone: a batch of one trains (BatchNorm would fail).
    model(torch.randn(1, 12, 1000)).sum().backward()


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError) as err:
        create_model("resnet1d99")
    for name in list_models():
        assert name in str(err.value)


def test_bad_constructor_arguments_are_value_errors():
    with pytest.raises(ValueError, match="in_leads"):
        create_model("resnet1d18", in_leads=0)
    with pytest.raises(ValueError, match="odd"):
        create_model("resnet1d18", kernel=4)
    with pytest.raises(ValueError, match="bad arguments"):
        create_model("alexnet1d", no_such_argument=1)


def test_resnet1d18_budget():
    model = create_model("resnet1d18").eval()
    params = sum(p.numel() for p in model.parameters())
    assert params <= 1_000_000, params
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 12, 2500))  # 10 s at the default 250 Hz
    assert counter.get_total_flops() < 150e6


def test_se_is_an_argument_not_a_fork():
    plain, se = create_model("resnet1d18"), create_model("se_resnet1d18")
    assert type(plain) is type(se)
    assert create_model("resnet1d18", se=True).state_dict().keys() == se.state_dict().keys()


def test_hybrid_resnet_takes_features_and_exports(tmp_path):
    model = small("resnet1d18", num_features=8).eval()
    x, f = torch.randn(2, 12, 1000), torch.randn(2, 8)
    assert model(x, f).shape == (2, 6)
    with pytest.raises(ValueError, match="features"):
        model(x)
    path = tmp_path / "hybrid.onnx"
    torch.onnx.export(
        model, (x, f), str(path), dynamo=False, input_names=["ecg", "features"], output_names=["logits"],
        dynamic_axes={"ecg": {0: "batch"}, "features": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["ecg", "features"]
    x3, f3 = torch.randn(3, 12, 1000), torch.randn(3, 8)
    (out,) = sess.run(None, {"ecg": x3.numpy(), "features": f3.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x3, f3).numpy(), atol=ONNX_ATOL, rtol=0)
