"""Every registered model: shapes, gradients, ONNX parity, GroupNorm variant; resnet1d18's budget; hybrid."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from resnet1d import create_model, list_models

# Small widths keep the parametrised tests fast; the budget test uses the defaults. Lists, not tuples:
# these are the kwargs a checkpoint stores as JSON.
SMALL = {
    "resnet1d18": {"widths": [8, 16, 24, 32]},
    "se_resnet1d18": {"widths": [8, 16, 24, 32]},
    "resnet1d34": {"widths": [8, 16, 24, 32]},
    "alexnet1d": {"width": 8, "hidden": 32},
    "squeezenet1d": {"width": 4},
    "rnn_attention": {"width": 16, "hidden": 16},
    "beatnet": {"widths": [8, 8, 16, 16]},
}
# ONNX Runtime and torch run the same float32 graph with different kernels: 1e-4 absolute on logits
# of order 1 is a few ulps of accumulated rounding, far below any decision difference.
ONNX_ATOL = 1e-4
EXPORT_KW = {"dynamo": False, "opset_version": 17}  # legacy exporter: seconds, not minutes, for the GRU


def small(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, **SMALL[name], **kw)


def test_every_model_has_small_settings():
    assert set(SMALL) == set(list_models())


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("length", [500, 1250, 2500])
def test_output_shape_and_finite(name, length):
    model = small(name).eval()
    for batch in (1, 2):
        with torch.no_grad():
            y = model(torch.randn(batch, 12, length))
        assert y.shape == (batch, 6)
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", list_models())
def test_num_classes_leads_and_bad_inputs(name):
    model = small(name, num_classes=9, in_leads=2).eval()
    assert model.num_features == 0
    assert model(torch.randn(2, 2, 1000)).shape == (2, 9)
    with pytest.raises(ValueError, match="expected input"):
        model(torch.randn(2, 12, 1000))
    with pytest.raises(ValueError, match="expected input"):
        model(torch.randn(2, 1000))
    assert model(torch.randn(2, 2, model.min_samples)).shape == (2, 9)
    if model.min_samples > 1:
        with pytest.raises(ValueError, match="at least"):
            model(torch.randn(2, 2, model.min_samples - 1))


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
    torch.onnx.export(  # example batch 2: a batch of 1 would be specialised into the graph
        model, (torch.randn(2, 12, 1000),), str(path), input_names=["ecg"], output_names=["logits"],
        dynamic_axes={"ecg": {0: "batch"}, "logits": {0: "batch"}}, **EXPORT_KW,
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (3, 1):  # other batch sizes than the example
        x = torch.randn(batch, 12, 1000)
        (out,) = sess.run(None, {"ecg": x.numpy()})
        with torch.no_grad():
            ref = model(x).numpy()
        np.testing.assert_allclose(out, ref, atol=ONNX_ATOL, rtol=0)


@pytest.mark.parametrize("name", list_models())
def test_onnx_export_dynamic_length(name, tmp_path):
    # export/ exports with a dynamic length too: no model may bake the example's length into the graph.
    model = small(name).eval()
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(
        model, (torch.randn(2, 12, 1000),), str(path), input_names=["ecg"], output_names=["logits"],
        dynamic_axes={"ecg": {0: "batch", 2: "samples"}, "logits": {0: "batch"}}, **EXPORT_KW,
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for length in (500, 777):
        x = torch.randn(2, 12, length)
        (out,) = sess.run(None, {"ecg": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(out, model(x).numpy(), atol=ONNX_ATOL, rtol=0)


@pytest.mark.parametrize("name", list_models())
def test_groupnorm_variant(name):
    model = small(name, norm_layer="group")
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    model.train()
    # GroupNorm normalises each sample alone: a batch of one trains (BatchNorm would fail).
    model(torch.randn(1, 12, 500)).sum().backward()


def test_groupnorm_variants_work_with_opacus():
    """What the "group" variant is for: Opacus computes per-sample gradients of every parameter (this
    also guards against in-place ops, which Opacus' hooks reject). The GRU needs Opacus' own DPGRU."""
    from opacus import GradSampleModule
    from opacus.validators import ModuleValidator

    for name in list_models():
        model = ModuleValidator.fix(small(name, norm_layer="group"))
        assert ModuleValidator.validate(model, strict=False) == [], name
        GradSampleModule(model)(torch.randn(3, 12, 250)).sum().backward()
        for pname, p in model.named_parameters():
            assert p.grad_sample is not None and p.grad_sample.shape[0] == 3, (name, pname)


def test_callable_norm_layer_and_bad_norm_string():
    model = create_model("resnet1d18", widths=[8, 8, 8, 8], norm_layer=lambda c: nn.GroupNorm(1, c))
    assert all(m.num_groups == 1 for m in model.modules() if isinstance(m, nn.GroupNorm))
    with pytest.raises(ValueError, match="norm_layer"):
        create_model("resnet1d18", norm_layer="layer")


@pytest.mark.parametrize("name", list_models())
def test_kwargs_survive_json(name):
    kwargs = json.loads(json.dumps({**SMALL[name], "norm_layer": "group", "dropout": 0.1}))
    a, b = create_model(name, **kwargs), create_model(name, **kwargs)
    assert a.state_dict().keys() == b.state_dict().keys()


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
    with pytest.raises(ValueError, match="widths"):
        create_model("resnet1d18", widths=[8, 0, 8, 8])
    with pytest.raises(ValueError, match="dropout"):
        create_model("squeezenet1d", dropout=1.5)
    with pytest.raises(ValueError, match="width"):
        create_model("rnn_attention", width=1)
    with pytest.raises(ValueError, match="bad arguments"):
        create_model("alexnet1d", no_such_argument=1)


def test_resnet1d18_budget():
    model = create_model("resnet1d18").eval()
    params = sum(p.numel() for p in model.parameters())
    assert params <= 1_100_000, params
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 12, 2500))  # 10 s at the default 250 Hz; torch counts a multiply-add as 2
    assert counter.get_total_flops() < 150e6


def test_se_is_an_argument_not_a_fork():
    plain, se = create_model("resnet1d18"), create_model("se_resnet1d18")
    assert type(plain) is type(se)
    assert create_model("resnet1d18", se=True).state_dict().keys() == se.state_dict().keys()


@pytest.mark.parametrize("name", ["resnet1d18", "se_resnet1d18"])
def test_hybrid_resnet_takes_features_and_exports(name, tmp_path):
    model = small(name, num_features=8).eval()
    assert model.num_features == 8
    x, f = torch.randn(2, 12, 1000), torch.randn(2, 8)
    assert model(x, f).shape == (2, 6)
    with pytest.raises(ValueError, match="features"):
        model(x)
    with pytest.raises(ValueError, match="features"):
        model(x, torch.randn(2, 5))
    with pytest.raises(ValueError, match="num_features=0"):
        small(name).eval()(x, f)
    path = tmp_path / "hybrid.onnx"
    torch.onnx.export(
        model, (x, f), str(path), input_names=["ecg", "features"], output_names=["logits"],
        dynamic_axes={"ecg": {0: "batch"}, "features": {0: "batch"}, "logits": {0: "batch"}}, **EXPORT_KW,
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["ecg", "features"]
    x3, f3 = torch.randn(3, 12, 1000), torch.randn(3, 8)
    (out,) = sess.run(None, {"ecg": x3.numpy(), "features": f3.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x3, f3).numpy(), atol=ONNX_ATOL, rtol=0)


@pytest.mark.parametrize("norm_layer", ["batch", "group"])
def test_hybrid_features_reach_the_output(norm_layer):
    # GroupNorm over one feature per group would be constant: the features must still matter.
    model = small("resnet1d18", num_features=8, norm_layer=norm_layer).train()
    model(torch.randn(4, 12, 500), torch.randn(4, 8)).sum().backward()
    model.eval()
    x = torch.randn(1, 12, 500).expand(4, -1, -1)
    with torch.no_grad():
        y = model(x, torch.randn(4, 8) * 3)
    assert (y - y[:1]).abs().amax() > 1e-4
    weight = model.feature_net[1].weight.grad
    assert weight is not None and weight.abs().sum() > 0
