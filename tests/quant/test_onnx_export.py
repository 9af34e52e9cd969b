"""ONNX QDQ export of a QAT-converted MNIST model, checked in onnxruntime against pyslim's int8 model."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from pyslim.quant import nn as qnn
from pyslim.quant.onnx_export import export_onnx
from pyslim.quant.qat import QAT
from pyslim.quant.quanters import FakeQuantMovingAverageAbsMax

QUANTIZED_LAYERS = ["features.0", "features.4", "features.8", "classifier.1", "classifier.3"]


def test_onnx_and_onnxruntime_installed():
    import onnx
    import onnxruntime

    assert onnx.__version__ and onnxruntime.__version__
    assert "CPUExecutionProvider" in onnxruntime.get_available_providers()


def _calibrated_int8_model(fp32_model, x_train, batches=20, batch=128):
    quanter = QAT()
    model = quanter.quantize(copy.deepcopy(fp32_model)).eval()
    for m in model.modules():
        if isinstance(m, FakeQuantMovingAverageAbsMax):
            m.train()  # only the activation statistics move; BN stays in eval
    with torch.no_grad():
        for i in range(batches):
            model(x_train[i * batch:(i + 1) * batch])
    return quanter.convert(model)


@pytest.mark.slow
def test_exported_mnist_model_agrees_with_int8_model_in_onnxruntime(tmp_path, mnist, mnist_fp32):
    import onnx
    import onnxruntime as ort

    x_train, _, x_test, y_test = mnist
    fp32_model, _ = mnist_fp32
    int8_model = _calibrated_int8_model(fp32_model, x_train)
    path = str(tmp_path / "mnist_int8.onnx")
    export_onnx(int8_model, x_test[:1], path)

    graph = onnx.load(path).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") == len(QUANTIZED_LAYERS)  # one per quantized layer's input
    assert ops.count("DequantizeLinear") == 2 * len(QUANTIZED_LAYERS)  # activation + weight
    inits = {i.name: i for i in graph.initializer}
    for name in QUANTIZED_LAYERS:
        assert inits[f"{name}.weight_quantized"].data_type == onnx.TensorProto.INT8
        assert f"{name}.weight" not in inits  # no float copy of a quantized weight
        w = onnx.numpy_helper.to_array(inits[f"{name}.weight_quantized"])
        assert np.array_equal(w, int8_model.get_submodule(name).weight_int8.numpy())

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = x_test[:2000]
    onnx_logits = np.concatenate([session.run(None, {"input": x[i:i + 500].numpy()})[0]
                                  for i in range(0, len(x), 500)])
    with torch.no_grad():
        int8_logits = torch.cat([int8_model(x[i:i + 500]) for i in range(0, len(x), 500)]).numpy()
    agree = float((onnx_logits.argmax(1) == int8_logits.argmax(1)).mean())
    onnx_acc = 100.0 * float((onnx_logits.argmax(1) == y_test[:2000].numpy()).mean())
    int8_acc = 100.0 * float((int8_logits.argmax(1) == y_test[:2000].numpy()).mean())
    print(f"ONNX top-1 agreement {agree:.4f}; accuracy onnxruntime {onnx_acc:.2f}% vs pyslim int8 {int8_acc:.2f}%; "
          f"max |logit diff| {np.abs(onnx_logits - int8_logits).max():.2e}")
    assert agree >= 0.99, agree
    assert abs(onnx_acc - int8_acc) <= 0.5


def test_export_small_model_matches_exactly_and_validates_arguments(tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    model = nn.Sequential(
        qnn.Int8Conv2d.from_float(nn.Conv2d(3, 4, 3, padding=1), activation=(0.02, 3)),
        nn.ReLU(),
        qnn.Int8Conv2d.from_float(nn.Conv2d(4, 4, 3, groups=4), activation=(0.01, -128)),
        nn.Flatten(),
        qnn.Int8Linear.from_float(nn.Linear(4 * 4 * 4, 5), activation=(0.005, 0)),
    )
    x = torch.rand(7, 3, 6, 6)
    path = str(tmp_path / "small.onnx")
    export_onnx(model, (x[:2],), path)
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    # Same int8 inputs and weights: only float summation order and the final float epilogue differ.
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
    with pytest.raises(ValueError, match="convert"):
        export_onnx(nn.Sequential(nn.Linear(2, 2)), torch.randn(1, 2), str(tmp_path / "x.onnx"))
    with pytest.raises(ValueError, match="opset_version"):
        export_onnx(model, x, str(tmp_path / "x.onnx"), opset_version=10)
    with pytest.raises(TypeError, match="example_inputs"):
        export_onnx(model, [x], str(tmp_path / "x.onnx"))
