"""Builds the ONNX models that tests/onnx_backend.rs serves, as a Triton model repository, and
the requests to send with the outputs ONNX Runtime (in Python) gives for them.

Usage: make_models.py REPOSITORY CASES_JSON

Every model is made with the `onnx` package's graph helpers and checked with its checker (the
broken ones on purpose excepted). Each case is {model, inputs: [{name, datatype, shape, data}],
outputs: [{name, datatype, shape, data}]}, with data flattened in row-major order; FP16/BF16
values are given as float32 numbers and BYTES as strings.
"""

import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

REPO, CASES = sys.argv[1], sys.argv[2]
cases = []


def save(name, model, config=None, check=True, version=1):
    if check:
        onnx.checker.check_model(model)
    folder = os.path.join(REPO, name, str(version))
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "model.onnx")
    onnx.save(model, path)
    if config is not None:
        with open(os.path.join(REPO, name, "config.pbtxt"), "w") as f:
            f.write(config)
    return path


def model(nodes, inputs, outputs, initializers=(), opset=17, ml=False):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    opsets = [helper.make_opsetid("", opset)]
    if ml:
        opsets.append(helper.make_opsetid("ai.onnx.ml", 3))
    m = helper.make_model(graph, opset_imports=opsets)
    m.ir_version = 8
    return m


def add_case(name, path, feeds, wire_types):
    """Runs the model in ONNX Runtime and records the request and its outputs."""
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    results = session.run(None, feeds)
    def tensor(name, value, datatype):
        data = value.reshape(-1).tolist()
        if datatype == "BYTES":
            data = [v.decode() if isinstance(v, bytes) else str(v) for v in data]
        return {"name": name, "datatype": datatype, "shape": list(value.shape), "data": data}
    cases.append({
        "model": name,
        "inputs": [tensor(k, v, wire_types[k]) for k, v in feeds.items()],
        "outputs": [tensor(o.name, r, wire_types[o.name])
                    for o, r in zip(session.get_outputs(), results)],
    })


# double: no config.pbtxt at all; auto-complete makes it batchable (max_batch_size 4).
x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3])
y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 3])
two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
path = save("double", model([helper.make_node("Mul", ["X", "two"], ["Y"])], [x], [y], [two]))
add_case("double", path, {"X": np.array([[1.5, -2.0, 3.25]], np.float32)},
         {"X": "FP32", "Y": "FP32"})

# types: Identity for every datatype, config.pbtxt written out in full.
TYPES = [
    ("BOOL", TensorProto.BOOL, "TYPE_BOOL"), ("UINT8", TensorProto.UINT8, "TYPE_UINT8"),
    ("UINT16", TensorProto.UINT16, "TYPE_UINT16"), ("UINT32", TensorProto.UINT32, "TYPE_UINT32"),
    ("UINT64", TensorProto.UINT64, "TYPE_UINT64"), ("INT8", TensorProto.INT8, "TYPE_INT8"),
    ("INT16", TensorProto.INT16, "TYPE_INT16"), ("INT32", TensorProto.INT32, "TYPE_INT32"),
    ("INT64", TensorProto.INT64, "TYPE_INT64"), ("FP16", TensorProto.FLOAT16, "TYPE_FP16"),
    ("BF16", TensorProto.BFLOAT16, "TYPE_BF16"), ("FP32", TensorProto.FLOAT, "TYPE_FP32"),
    ("FP64", TensorProto.DOUBLE, "TYPE_FP64"), ("BYTES", TensorProto.STRING, "TYPE_STRING"),
]
nodes, ins, outs, config = [], [], [], ['name: "types"', 'backend: "onnxruntime"', "max_batch_size: 8"]
for wire, onnx_type, config_type in TYPES:
    ins.append(helper.make_tensor_value_info(f"IN_{wire}", onnx_type, ["N", 2]))
    outs.append(helper.make_tensor_value_info(f"OUT_{wire}", onnx_type, ["N", 2]))
    nodes.append(helper.make_node("Identity", [f"IN_{wire}"], [f"OUT_{wire}"]))
    config.append(f'input {{ name: "IN_{wire}" data_type: {config_type} dims: [2] }}')
    config.append(f'output {{ name: "OUT_{wire}" data_type: {config_type} dims: [2] }}')
save("types", model(nodes, ins, outs), "\n".join(config) + "\n")

# sum_rows: dynamic dimensions without batching (max_batch_size 0 in its config).
x = helper.make_tensor_value_info("X", TensorProto.DOUBLE, ["R", "C"])
y = helper.make_tensor_value_info("Y", TensorProto.DOUBLE, ["R"])
axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
path = save("sum_rows", model(
    [helper.make_node("ReduceSum", ["X", "axes"], ["Y"], keepdims=0)], [x], [y], [axes]),
    'name: "sum_rows"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
    'input [{ name: "X" data_type: TYPE_FP64 dims: [-1, -1] }]\n'
    'output [{ name: "Y" data_type: TYPE_FP64 dims: [-1] }]\n'
    'instance_group [{ count: 2 kind: KIND_CPU }]\n'
    'optimization { graph { level: 1 } }\n'
    'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'
    'parameters { key: "inter_op_thread_count" value: { string_value: "1" } }\n'
    'parameters { key: "execution_mode" value: { string_value: "0" } }\n')
for rows, cols in [(1, 5), (3, 2)]:
    add_case("sum_rows", path, {"X": np.arange(rows * cols, dtype=np.float64).reshape(rows, cols) / 7},
             {"X": "FP64", "Y": "FP64"})

# lower: strings through an ONNX operator.
x = helper.make_tensor_value_info("TEXT", TensorProto.STRING, ["C"])
y = helper.make_tensor_value_info("LOWER", TensorProto.STRING, ["C"])
path = save("lower", model(
    [helper.make_node("StringNormalizer", ["TEXT"], ["LOWER"], case_change_action="LOWER", locale="C")], [x], [y]),
    'name: "lower"\nbackend: "onnxruntime"\n')
add_case("lower", path, {"TEXT": np.array(["Hello", "WORLD", "Nereid"], dtype=object)},
         {"TEXT": "BYTES", "LOWER": "BYTES"})

# linear_classifier: an ONNX-ML operator (ai.onnx.ml.LinearClassifier), iris-shaped.
x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])
label = helper.make_tensor_value_info("LABEL", TensorProto.INT64, ["N"])
scores = helper.make_tensor_value_info("SCORES", TensorProto.FLOAT, ["N", 3])
coefficients = [0.4, 1.4, -2.2, -1.0, 0.4, -1.6, 0.5, -1.3, -1.7, -1.5, 2.4, 2.6]
path = save("linear_classifier", model(
    [helper.make_node("LinearClassifier", ["X"], ["LABEL", "SCORES"], domain="ai.onnx.ml",
                      coefficients=coefficients, intercepts=[0.3, 1.1, -1.4],
                      classlabels_ints=[0, 1, 2], post_transform="SOFTMAX")],
    [x], [label, scores], ml=True))
add_case("linear_classifier", path,
         {"X": np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)},
         {"X": "FP32", "LABEL": "INT64", "SCORES": "FP32"})

# Broken on purpose: each must fail to load with a clear reason, the others serve on.
with open(os.path.join(REPO, "double", "1", "model.onnx"), "rb") as f:
    good = f.read()
os.makedirs(os.path.join(REPO, "truncated", "1"))
with open(os.path.join(REPO, "truncated", "1", "model.onnx"), "wb") as f:
    f.write(good[: len(good) // 2])
os.makedirs(os.path.join(REPO, "not_onnx", "1"))
with open(os.path.join(REPO, "not_onnx", "1", "model.onnx"), "w") as f:
    f.write("this is a text file, not a model\n")
for name in ["truncated", "not_onnx"]:
    with open(os.path.join(REPO, name, "config.pbtxt"), "w") as f:
        f.write(f'name: "{name}"\nbackend: "onnxruntime"\n')
x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3])
y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 3])
save("future_opset", model([helper.make_node("Relu", ["X"], ["Y"])], [x], [y], opset=99),
     check=False)
save("wrong_input", model([helper.make_node("Relu", ["X"], ["Y"])], [x], [y]),
     'name: "wrong_input"\nbackend: "onnxruntime"\nmax_batch_size: 4\n'
     'input [{ name: "INPUT" data_type: TYPE_FP32 dims: [3] }]\n')
# Loads, then fails at inference: the target shape cannot hold a [N, 3] input.
shape = helper.make_tensor("shape", TensorProto.INT64, [1], [5])
save("bad_reshape", model([helper.make_node("Reshape", ["X", "shape"], ["Y"])], [x],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [5])], [shape]),
     'name: "bad_reshape"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
     'input [{ name: "X" data_type: TYPE_FP32 dims: [-1, 3] }]\n'
     'output [{ name: "Y" data_type: TYPE_FP32 dims: [5] }]\n')

# Loads and serves, but an index outside the table fails that request only.
indices = helper.make_tensor_value_info("INDEX", TensorProto.INT64, ["N"])
values = helper.make_tensor_value_info("VALUE", TensorProto.FLOAT, ["N"])
table = helper.make_tensor("table", TensorProto.FLOAT, [3], [10.0, 20.0, 30.0])
path = save("lookup", model([helper.make_node("Gather", ["table", "INDEX"], ["VALUE"])],
                            [indices], [values], [table]),
            'name: "lookup"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
            'input [{ name: "INDEX" data_type: TYPE_INT64 dims: [-1] }]\n'
            'output [{ name: "VALUE" data_type: TYPE_FP32 dims: [-1] }]\n')
add_case("lookup", path, {"INDEX": np.array([2, 0], np.int64)}, {"INDEX": "INT64", "VALUE": "FP32"})

# A stateful model for the sequence batcher: a running sum per sequence in implicit state, and
# the correlation id it was given, echoed.
value_in = helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["N", 1])
state_in = helper.make_tensor_value_info("STATE_IN", TensorProto.FLOAT, ["N", 1])
corrid = helper.make_tensor_value_info("CORRID", TensorProto.UINT64, ["N", 1])
total = helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, ["N", 1])
state_out = helper.make_tensor_value_info("STATE_OUT", TensorProto.FLOAT, ["N", 1])
corrid_out = helper.make_tensor_value_info("CORRID_OUT", TensorProto.UINT64, ["N", 1])
save("accumulate", model(
    [helper.make_node("Add", ["INPUT", "STATE_IN"], ["SUM"]),
     helper.make_node("Identity", ["SUM"], ["OUTPUT"]),
     helper.make_node("Identity", ["SUM"], ["STATE_OUT"]),
     helper.make_node("Identity", ["CORRID"], ["CORRID_OUT"])],
    [value_in, state_in, corrid], [total, state_out, corrid_out]),
    'name: "accumulate"\nbackend: "onnxruntime"\nmax_batch_size: 8\n'
    'input [{ name: "INPUT" data_type: TYPE_FP32 dims: [1] }]\n'
    'output [{ name: "OUTPUT" data_type: TYPE_FP32 dims: [1] },'
    ' { name: "CORRID_OUT" data_type: TYPE_UINT64 dims: [1] }]\n'
    'sequence_batching {\n'
    ' max_sequence_idle_microseconds: 300000\n'
    ' control_input [{ name: "CORRID" control [{ kind: CONTROL_SEQUENCE_CORRID'
    ' data_type: TYPE_UINT64 }] }]\n'
    ' state [{ input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_FP32'
    ' dims: [1] }]\n'
    ' oldest { max_candidate_sequences: 4 max_queue_delay_microseconds: 2000 }\n'
    '}\n')

# An ensemble that mixes backends: double (ONNX, auto-completed config) then argmax (Nereid's).
os.makedirs(os.path.join(REPO, "pick", "1"))
with open(os.path.join(REPO, "pick", "config.pbtxt"), "w") as f:
    f.write('name: "pick"\nbackend: "argmax"\nmax_batch_size: 4\n'
            'input [{ name: "SCORES" data_type: TYPE_FP32 dims: [3] }]\n'
            'output [{ name: "LABEL" data_type: TYPE_STRING dims: [1] },'
            ' { name: "INDEX" data_type: TYPE_INT64 dims: [1] }]\n')
os.makedirs(os.path.join(REPO, "double_then_pick", "1"))
with open(os.path.join(REPO, "double_then_pick", "config.pbtxt"), "w") as f:
    f.write('name: "double_then_pick"\nplatform: "ensemble"\nmax_batch_size: 4\n'
            'input [{ name: "X" data_type: TYPE_FP32 dims: [3] }]\n'
            'output [{ name: "DOUBLED" data_type: TYPE_FP32 dims: [3] },'
            ' { name: "INDEX" data_type: TYPE_INT64 dims: [1] }]\n'
            'ensemble_scheduling { step [\n'
            ' { model_name: "double" model_version: -1 input_map { key: "X" value: "X" }'
            ' output_map { key: "Y" value: "DOUBLED" } },\n'
            ' { model_name: "pick" model_version: -1 input_map { key: "SCORES" value: "DOUBLED" }'
            ' output_map { key: "INDEX" value: "INDEX" } } ] }\n')

with open(CASES, "w") as f:
    json.dump(cases, f, indent=1)
