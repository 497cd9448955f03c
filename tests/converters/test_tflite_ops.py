"""Op-level parity of the TFLite writer: tiny ONNX graphs built with onnx.helper, run in
ONNX Runtime and in LiteRT (as the onnxruntime quantization tests do), compared elementwise."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from converters.onnx_source import UnsupportedOpsError
from converters.tflite import TFLiteConfig, convert_model
from edge_runtime.engines.tflite import load_interpreter_class

RNG = np.random.default_rng(7)


def _model(nodes, in_shape, out_shape=None, inits=(), opset=17, out_type=TensorProto.FLOAT):
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                                     in_shape)],
                          [helper.make_tensor_value_info("Y", out_type, out_shape)],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _run_both(model, x, config=None):
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    data, facts = convert_model(model, config or TFLiteConfig())
    interp = load_interpreter_class()(model_content=data)
    d = interp.get_input_details()[0]
    interp.resize_tensor_input(d["index"], list(x.shape))
    interp.allocate_tensors()
    interp.set_tensor(d["index"], x)
    interp.invoke()
    got = interp.get_tensor(interp.get_output_details()[0]["index"])
    return want, got, facts


def _w(*shape, scale=0.5):
    return (RNG.normal(0, scale, shape)).astype(np.float32)


X2 = RNG.normal(0, 1.5, (5, 6)).astype(np.float32)
X4 = RNG.normal(0, 1.0, (3, 4, 7, 7)).astype(np.float32)

CASES = {
    # unary activations
    **{op: ([helper.make_node(op, ["X"], ["Y"])], X2, {}) for op in
       ("Relu", "Sigmoid", "Tanh", "Abs", "Neg", "Exp", "Floor")},
    "LeakyRelu": ([helper.make_node("LeakyRelu", ["X"], ["Y"], alpha=0.2)], X2, {}),
    "Clip06": ([helper.make_node("Clip", ["X", "lo", "hi"], ["Y"])], X2,
               {"lo": np.float32(0), "hi": np.float32(6)}),
    "ClipAny": ([helper.make_node("Clip", ["X", "lo", "hi"], ["Y"])], X2,
                {"lo": np.float32(-0.5), "hi": np.float32(0.7)}),
    # binary with broadcasting, constants on either side
    "AddRow": ([helper.make_node("Add", ["X", "c"], ["Y"])], X2, {"c": _w(6)}),
    "SubLeft": ([helper.make_node("Sub", ["c", "X"], ["Y"])], X2, {"c": np.float32(1.0)}),
    "MulCol": ([helper.make_node("Mul", ["X", "c"], ["Y"])], X2, {"c": _w(5, 1)}),
    "DivRow": ([helper.make_node("Div", ["X", "c"], ["Y"])], X2,
               {"c": np.abs(_w(6)) + 0.5}),
    "AddSelf": ([helper.make_node("Add", ["X", "X"], ["Y"])], X2, {}),
    "Softmax": ([helper.make_node("Softmax", ["X"], ["Y"], axis=-1)], X2, {}),
    "LogSoftmax": ([helper.make_node("LogSoftmax", ["X"], ["Y"], axis=1)], X2, {}),
    "GemmTransB": ([helper.make_node("Gemm", ["X", "w", "b"], ["Y"], transB=1, alpha=0.5,
                                     beta=2.0)], X2, {"w": _w(3, 6), "b": _w(3)}),
    "MatMulAddRelu": ([helper.make_node("MatMul", ["X", "w"], ["m"]),
                       helper.make_node("Add", ["m", "b"], ["a"]),
                       helper.make_node("Relu", ["a"], ["Y"])], X2, {"w": _w(6, 4), "b": _w(4)}),
    "ConcatConst": ([helper.make_node("Concat", ["X", "X"], ["Y"], axis=1)], X2, {}),
    "Unsqueeze": ([helper.make_node("Unsqueeze", ["X", "ax"], ["Y"])], X2,
                  {"ax": np.array([1], np.int64)}),
    "ReduceMean": ([helper.make_node("ReduceMean", ["X"], ["Y"], axes=[1], keepdims=1)], X2, {}),
    "GatherCols": ([helper.make_node("Gather", ["X", "i"], ["Y"], axis=1)], X2,
                   {"i": np.array([4, 0, 2], np.int64)}),
    # vision ops on NCHW input
    "ConvSame": ([helper.make_node("Conv", ["X", "w", "b"], ["Y"], pads=[1, 1, 1, 1],
                                   kernel_shape=[3, 3])], X4, {"w": _w(5, 4, 3, 3), "b": _w(5)}),
    "ConvStrideAsym": ([helper.make_node("Conv", ["X", "w"], ["Y"], pads=[0, 1, 2, 0],
                                         strides=[2, 2])], X4, {"w": _w(2, 4, 3, 3)}),
    "ConvDilated": ([helper.make_node("Conv", ["X", "w"], ["Y"], dilations=[2, 2])], X4,
                    {"w": _w(3, 4, 2, 2)}),
    "Depthwise": ([helper.make_node("Conv", ["X", "w"], ["Y"], group=4, pads=[1, 1, 1, 1])],
                  X4, {"w": _w(8, 1, 3, 3)}),
    "ConvAutoPad": ([helper.make_node("Conv", ["X", "w"], ["Y"], auto_pad="SAME_UPPER",
                                      strides=[2, 2])], X4, {"w": _w(3, 4, 3, 3)}),
    "MaxPoolPad": ([helper.make_node("MaxPool", ["X"], ["Y"], kernel_shape=[3, 3],
                                     strides=[2, 2], pads=[1, 1, 1, 1])], X4, {}),
    "MaxPoolAsym": ([helper.make_node("MaxPool", ["X"], ["Y"], kernel_shape=[2, 2],
                                      pads=[0, 0, 1, 1])], X4, {}),
    "AvgPoolIncl": ([helper.make_node("AveragePool", ["X"], ["Y"], kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1], count_include_pad=1)], X4, {}),
    "AvgPoolExcl": ([helper.make_node("AveragePool", ["X"], ["Y"], kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1])], X4, {}),
    "GlobalMax": ([helper.make_node("GlobalMaxPool", ["X"], ["Y"])], X4, {}),
    "ChannelSoftmax": ([helper.make_node("Conv", ["X", "w"], ["c"]),
                        helper.make_node("Softmax", ["c"], ["Y"], axis=1)], X4,
                       {"w": _w(3, 4, 1, 1)}),
    "NHWCBiasAdd": ([helper.make_node("Conv", ["X", "w"], ["c"]),
                     helper.make_node("Add", ["c", "b"], ["s"]),
                     helper.make_node("Sigmoid", ["s"], ["Y"])], X4,
                    {"w": _w(3, 4, 1, 1), "b": _w(1, 3, 1, 1)}),
    "Transpose": ([helper.make_node("Transpose", ["X"], ["Y"], perm=[0, 2, 3, 1])], X4, {}),
    "SliceCh": ([helper.make_node("Slice", ["X", "s", "e", "a"], ["Y"])], X4,
                {"s": np.array([1], np.int64), "e": np.array([3], np.int64),
                 "a": np.array([1], np.int64)}),
}


XP = (np.abs(X2) + 0.1).astype(np.float32)  # positive inputs for Log / Sqrt / Pow / Reciprocal
# The rest of the README's op table, one small graph each (reviewer additions).
CASES.update({
    **{op: ([helper.make_node(op, ["X"], ["Y"])], X2, {}) for op in
       ("Ceil", "Sin", "Cos", "HardSwish")},
    **{op: ([helper.make_node(op, ["X"], ["Y"])], XP, {}) for op in
       ("Log", "Sqrt", "Reciprocal")},
    "Elu": ([helper.make_node("Elu", ["X"], ["Y"])], X2, {}),  # alpha != 1 is refused by name
    "MaxConst": ([helper.make_node("Max", ["X", "c"], ["Y"])], X2, {"c": _w(6)}),
    "MinConst": ([helper.make_node("Min", ["c", "X"], ["Y"])], X2, {"c": _w(6)}),
    "PowConst": ([helper.make_node("Pow", ["X", "c"], ["Y"])], XP, {"c": np.float32(1.5)}),
    "ConstantNode": ([helper.make_node("Constant", [], ["c"], value_floats=[0.5] * 6),
                      helper.make_node("Mul", ["X", "c"], ["Y"])], X2, {}),
    "Flatten4D": ([helper.make_node("Flatten", ["X"], ["Y"], axis=1)], X4, {}),
    "ReshapeNCHW": ([helper.make_node("Conv", ["X", "w"], ["c"]),
                     helper.make_node("Reshape", ["c", "s"], ["Y"])], X4,
                    {"w": _w(2, 4, 1, 1), "s": np.array([-1, 2 * 49], np.int64)}),
    "Squeeze": ([helper.make_node("GlobalAveragePool", ["X"], ["g"]),
                 helper.make_node("Squeeze", ["g", "ax"], ["Y"])], X4,
                {"ax": np.array([2, 3], np.int64)}),
    "GlobalAvg": ([helper.make_node("GlobalAveragePool", ["X"], ["Y"])], X4, {}),
    "BatchNorm": ([helper.make_node("BatchNormalization", ["X", "s", "b", "m", "v"], ["Y"],
                                    epsilon=1e-3)], X4,
                  {"s": _w(4), "b": _w(4), "m": _w(4), "v": np.abs(_w(4)) + 0.2}),
    "ReduceSum": ([helper.make_node("ReduceSum", ["X", "ax"], ["Y"], keepdims=0)], X2,
                  {"ax": np.array([1], np.int64)}),
    "ReduceMax": ([helper.make_node("ReduceMax", ["X"], ["Y"], axes=[1], keepdims=1)], X2, {}),
    "ReduceMin": ([helper.make_node("ReduceMin", ["X"], ["Y"], axes=[1], keepdims=0)], X2, {}),
    "Scaler": ([helper.make_node("Scaler", ["X"], ["Y"], domain="ai.onnx.ml",
                                 offset=[0.1, -0.2, 0.3, 0.0, 1.0, -1.0],
                                 scale=[2.0, 0.5, 1.0, 3.0, 0.25, 1.5])], X2, {}),
    **{f"Normalizer{n}": ([helper.make_node("Normalizer", ["X"], ["Y"], domain="ai.onnx.ml",
                                            norm=n)], X2, {}) for n in ("L1", "L2", "MAX")},
    "CastNotCast": ([helper.make_node("Relu", ["X"], ["r"]),
                     helper.make_node("Cast", ["r"], ["b"], to=TensorProto.BOOL),
                     helper.make_node("Not", ["b"], ["n"]),
                     helper.make_node("Cast", ["n"], ["Y"], to=TensorProto.FLOAT)], X2, {}),
    "LinearRegressor": ([helper.make_node("LinearRegressor", ["X"], ["Y"], domain="ai.onnx.ml",
                                          coefficients=list(_w(12).astype(float)),
                                          intercepts=[0.5, -0.5], targets=2)], X2, {}),
})


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_matches_onnxruntime(case):
    nodes, x, inits = CASES[case]
    model = _model(nodes, [None] + list(x.shape[1:]), None, inits.items())
    if any(n.domain == "ai.onnx.ml" for n in nodes):
        model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 1))
    want, got, _ = _run_both(model, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_linear_classifier_single_row_and_string_labels():
    x = RNG.normal(0, 1, (6, 3)).astype(np.float32)
    for pt in ("NONE", "LOGISTIC"):
        node = helper.make_node("LinearClassifier", ["X"], ["L", "Y"], domain="ai.onnx.ml",
                                coefficients=[0.5, -1.0, 0.25], intercepts=[0.1],
                                classlabels_ints=[3, 9], post_transform=pt)
        g = helper.make_graph([node], "lc", [helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                                          [None, 3])],
                              [helper.make_tensor_value_info("L", TensorProto.INT64, [None]),
                               helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 2])])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                                helper.make_opsetid("ai.onnx.ml", 1)])
        m.ir_version = 8
        want = ort.InferenceSession(m.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, {"X": x})
        data, _facts = convert_model(m, TFLiteConfig())
        interp = load_interpreter_class()(model_content=data)
        interp.resize_tensor_input(0, [6, 3])
        interp.allocate_tensors()
        interp.set_tensor(interp.get_input_details()[0]["index"], x)
        interp.invoke()
        outs = {d["name"]: interp.get_tensor(d["index"]) for d in interp.get_output_details()}
        assert np.array_equal(outs["L"], want[0])
        np.testing.assert_allclose(outs["Y"], want[1], atol=1e-6)


def test_attribute_level_problems_are_listed():
    nodes = [helper.make_node("Conv", ["X", "w"], ["c"], group=2),
             helper.make_node("ArgMax", ["c"], ["Y"], axis=1, select_last_index=1)]
    m = _model(nodes, [None, 4, 5, 5], None, [("w", _w(4, 2, 3, 3))], out_type=TensorProto.INT64)
    # grouped (non-depthwise) conv is found while converting; select_last_index up front
    with pytest.raises(UnsupportedOpsError, match="select_last_index"):
        convert_model(m, TFLiteConfig())
    m2 = _model([helper.make_node("Conv", ["X", "w"], ["Y"], group=2)], [None, 4, 5, 5], None,
                [("w", _w(4, 2, 3, 3))])
    with pytest.raises(UnsupportedOpsError, match="grouped convolution"):
        convert_model(m2, TFLiteConfig())


def test_int8_conv_and_dense_per_channel():
    nodes = [helper.make_node("Conv", ["X", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "d"], ["Y"])]
    wc = _w(16, 4, 3, 3) * np.linspace(0.1, 3, 16, dtype=np.float32).reshape(16, 1, 1, 1)
    m = _model(nodes, [None, 4, 7, 7], None, [("w", wc), ("d", _w(16 * 49, 10, scale=0.05))])
    want, got_fp, _ = _run_both(m, X4)
    _, got_q, facts = _run_both(m, X4, TFLiteConfig(int8_weights=True, int8_min_elements=0))
    assert facts["quantized_weights"] == 2
    scale = np.abs(want).max()
    np.testing.assert_allclose(got_fp, want, rtol=1e-4, atol=1e-4 * scale)
    assert np.abs(got_q - want).max() < 0.03 * scale  # 8-bit weights and activations


def _torch_style_flatten(extra=None):
    """What torch.onnx emits for ``x.view(x.size(0), -1)``: Shape → Gather → Unsqueeze → Concat
    → Reshape (the batch size flows through a shape tensor)."""
    nodes = [helper.make_node("Conv", ["X", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Shape", ["r"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"])]
    tail = "n1"
    if extra:
        nodes.append(helper.make_node(extra, ["n1", "two"], ["n2"]))
        tail = "n2"
    nodes += [helper.make_node("Concat", [tail, "minus1"], ["shp"], axis=0),
              helper.make_node("Reshape", ["r", "shp"], ["f"]),
              helper.make_node("Gemm", ["f", "d"], ["Y"], transB=1)]
    inits = [("w", _w(3, 4, 3, 3)), ("zero", np.array(0, np.int64)),
             ("ax0", np.array([0], np.int64)), ("minus1", np.array([-1], np.int64)),
             ("two", np.array([2], np.int64)), ("d", _w(5, 3 * 49, scale=0.1))]
    return _model(nodes, [None, 4, 7, 7], None, inits)


def test_exporter_shape_chain_keeps_the_batch_free():
    want, got, facts = _run_both(_torch_style_flatten(), X4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert "SHAPE" not in facts["tflite_ops"]  # folded: the Reshape target keeps the batch
    x9 = np.concatenate([X4, X4, X4[:1]])
    want9, got9, _ = _run_both(_torch_style_flatten(), x9)
    np.testing.assert_allclose(got9, want9, rtol=1e-5, atol=1e-5)


def test_arithmetic_on_the_batch_size_is_refused():
    with pytest.raises(UnsupportedOpsError, match="shape arithmetic on the batch"):
        convert_model(_torch_style_flatten("Mul"), TFLiteConfig())
