"""The deploy model's float ONNX graph (torch exporter) rewritten with integer weights and input Q/DQ.

Each deploy layer's weight is exported as a placeholder with unique values, found by name (``<layer>.weight``, or
``<layer>.weight_t`` ``[in, out]`` for linear layers), checked to be untouched by the exporter's optimizer (which
may fold BatchNorms into weights and keep their names) and replaced by integer codes + ``DequantizeLinear``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import Tensor, nn

from ._api import UnsupportedLayerError
from .layers import DeployLinear, is_deploy_layer
from .codes import MAX_INT_BITS, InputSpec, container
from .qdq import GraphBuilder, input_qdq, weight_dq

OPSET = 25
_CONSUMERS = {"Conv": 0, "Gemm": 0, "MatMul": None, "ConvTranspose": 0}


def _called_layers(model: nn.Module, example: Tensor) -> set[str]:
    called: set[str] = set()
    handles = [m.register_forward_pre_hook(lambda mod, inp, n=n: called.add(n))
               for n, m in model.named_modules() if is_deploy_layer(m)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return called


def _export_copy(dep: nn.Module, example: Tensor) -> tuple[nn.Module, dict[str, tuple[str, np.ndarray]]]:
    """A copy in export mode with unique placeholder weights; ``{layer: (initializer name, placeholder)}``."""
    exp = copy.deepcopy(dep).eval()
    marks = {}
    used = _called_layers(exp, example)  # a layer the forward never calls has no place in the graph
    for i, (name, m) in enumerate((n, m) for n, m in exp.named_modules() if is_deploy_layer(m) and n in used):
        m.export_mode = True
        if isinstance(m, DeployLinear):
            shape, attr = (m.in_features, m.out_features), "weight_t"
        else:
            shape, attr = tuple(m.weight.shape), "weight"
        ph = (torch.arange(int(np.prod(shape)), dtype=torch.float32) * 1e-3 + (i + 1)).reshape(shape)
        setattr(m, attr, nn.Parameter(ph, requires_grad=False))
        marks[name] = (f"{name}.{attr}", ph.numpy().copy())
        if getattr(m, "b_scale", None) is not None:  # an int32 bias: its initializer is replaced too
            bph = -(torch.arange(m.bias.numel(), dtype=torch.float32) * 1e-3 + (i + 1))
            m.bias = nn.Parameter(bph, requires_grad=False)
            marks[f"{name}#bias"] = (f"{name}.bias", bph.numpy().copy())
    return exp, marks


def export_float(
    dep: nn.Module, example: Tensor, path: Path, dynamic_batch: bool = True
) -> tuple[onnx.ModelProto, dict[str, tuple[str, np.ndarray]]]:
    """Export the deploy model (input quantizers off, placeholder weights) with the torch exporter at opset 25."""
    exp, marks = _export_copy(dep, example)
    kwargs = {}
    if dynamic_batch:
        kwargs["dynamic_axes"] = {"input": {0: "batch"}, "output": {0: "batch"}}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporter prints progress
        warnings.simplefilter("ignore")
        torch.onnx.export(
            exp, (example,), str(path), dynamo=True, opset_version=OPSET, external_data=False, optimize=True,
            input_names=["input"], output_names=["output"], verbose=False, **kwargs,
        )
    proto = onnx.load(str(path))
    proto.graph.doc_string = ""
    return proto, marks


def _consumer(nodes: list[onnx.NodeProto], tensor: str, layer: str) -> tuple[int, int]:
    users = [i for i, n in enumerate(nodes) if tensor in n.input]
    ops = [i for i in users if nodes[i].op_type in _CONSUMERS]
    if len(users) != 1 or len(ops) != 1:
        raise UnsupportedLayerError(
            f"Layer `{layer}`: its weight `{tensor}` feeds {[nodes[i].op_type for i in users]} in the exported graph, "
            "not one "
            "Conv/Gemm/MatMul, so its input quantizer has no place. HINT: keep the layer float "
            "(`exclude=[...]` in the search) or export it without quantization."
        )
    node = nodes[ops[0]]
    idx = _CONSUMERS[node.op_type]
    if idx is None:
        idx = 0 if node.input[1] == tensor else 1
    return ops[0], idx


def rewrite(proto: onnx.ModelProto, dep: nn.Module, marks: dict[str, tuple[str, np.ndarray]]) -> dict[str, dict]:
    """Replace placeholder weights by integer codes + DQ (or the float weight) and insert the input Q/DQ chains.

    Returns ``{layer: {"weight": container name or "FLOAT", "input": container name / "FLOAT" / None}}``.
    """
    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    modules = dict(dep.named_modules())
    nodes_in = list(g.node)
    producers = {o: i for i, n in enumerate(nodes_in) for o in n.output}
    before: dict[int, list[onnx.NodeProto]] = {}
    c = None
    head: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    summary: dict[str, dict] = {}
    for layer, (wname, ph) in marks.items():
        if layer.endswith("#bias"):
            continue
        init = inits.get(wname)
        if init is None or not np.array_equal(numpy_helper.to_array(init), ph):
            raise UnsupportedLayerError(
                f"Layer `{layer}`: the exporter {'removed' if init is None else 'changed'} its weight initializer "
                f"`{wname}` (folded into another op), so it cannot carry integer codes. HINT: keep the layer float."
            )
        m = modules[layer]
        pos, idx = _consumer(nodes_in, wname, layer)
        node = nodes_in[pos]
        g.initializer.remove(init)
        transposed = isinstance(m, DeployLinear)
        b = GraphBuilder(layer)
        info: dict = {"weight": "FLOAT", "input": None, "op": node.op_type}
        if m.quantized():
            codes = m.codes_tensor()
            if not torch.equal(m.dequantized(codes), m.weight.detach()):
                raise AssertionError(f"Layer `{layer}`: the deploy weight is not codes * scale (+ lo).")
            c = container(max(m.w_bits, 1), m.w_signed)
            arr = codes.numpy().T.copy() if transposed else codes.numpy()
            scale = m.w_scale.detach().float().numpy()
            lo = None if m.w_lo is None else m.w_lo.detach().float().numpy()
            weight_dq(b, wname, arr, scale, lo, 1 if transposed else 0, c)
            info["weight"] = c.name
        else:
            w = m.weight.detach().float()
            new_inits.append(numpy_helper.from_array((w.T.contiguous() if transposed else w).numpy(), wname))
        bias_mark = marks.get(f"{layer}#bias")
        if bias_mark is not None:
            _int32_bias(g, inits, b, bias_mark, node, m, layer)
            info["bias"] = "INT32"
        head.extend(b.nodes)
        new_inits.extend(b.inits)
        if m.input_spec is not None:
            target, slot = pos, idx
            p = producers.get(node.input[idx])
            if p is not None and nodes_in[p].op_type == "Pad" and sum(
                nodes_in[p].output[0] in n.input for n in nodes_in
            ) == 1:
                target, slot = p, 0  # the fixed model quantizes before its "SAME" padding
            qb = GraphBuilder(layer)
            wbits = c.bits if m.quantized() else None
            nodes_in[target].input[slot] = input_qdq(qb, nodes_in[target].input[slot], m.input_spec, wbits)
            before.setdefault(target, []).extend(qb.nodes)
            new_inits.extend(qb.inits)
            info["input"] = _input_container(m.input_spec, wbits)
        summary[layer] = info
    nodes = list(head)
    for i, n in enumerate(nodes_in):
        nodes.extend(before.get(i, []))
        nodes.append(n)
    copies = []
    for n in nodes:
        c2 = onnx.NodeProto()
        c2.CopyFrom(n)
        copies.append(c2)
    del g.node[:]
    g.node.extend(copies)
    g.initializer.extend(new_inits)
    return summary


def _int32_bias(g, inits, b: GraphBuilder, mark, node, m, layer: str) -> None:  # noqa: ANN001
    """Replace the bias placeholder by ``DequantizeLinear(int32 codes, s_in * s_w, 0; axis 0)``."""
    bname, ph = mark
    init = inits.get(bname)
    if init is None or not np.array_equal(numpy_helper.to_array(init), ph) or list(node.input)[2:3] != [bname]:
        raise UnsupportedLayerError(f"Layer `{layer}`: the exporter changed or moved its bias `{bname}`.")
    g.initializer.remove(init)
    scale = m.b_scale.detach().float()
    codes = torch.round(m.bias.detach() / scale)
    if not torch.equal(codes * scale, m.bias.detach()):
        raise AssertionError(f"Layer `{layer}`: the deploy bias is not int32 codes * scale.")
    q = b.const("bias_codes", codes.numpy().astype(np.int32))
    s = b.f32("bias_scale", scale.numpy())
    z = b.const("bias_zero_point", np.zeros(scale.shape, dtype=np.int32))
    b.node("DequantizeLinear", [q, s, z], "bias_dq", out=bname, axis=0)


def _input_container(spec: InputSpec, wbits: int | None) -> str:
    if spec.bits > MAX_INT_BITS:
        return "FLOAT"
    c = container(spec.bits, spec.grid == "symmetric" and spec.signed)
    if wbits == 2 and c.bits == 8 and not c.signed:
        return "INT8(zp=-128)"
    return c.name
