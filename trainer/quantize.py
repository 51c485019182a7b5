"""int8 ONNX Runtime engines: ONNX Runtime's dynamic quantization of the exported fp32 graph's weight matmuls.

Dynamic, not static (QDQ with calibration): every MatMul (and Gemm, rewritten as MatMul first, since ONNX Runtime's
dynamic mode skips Gemm) whose second input is a weight gets int8 weights, symmetric per output channel; its
activations are quantised to uint8 per batch at run time, from the batch's own range. A ViT's activations carry
outlier channels (after LayerNorm, in the MLP), which one calibrated scale per tensor clips or coarsens; a scale per
batch follows them. Dynamic needs no calibration images (``trainer build-engine`` has none), and when this was
chosen (2 CPU threads) it was closer to fp32 and faster than static QDQ: on the demo engine's validation crops
max |ΔP(fake)| 0.003 against 0.006 and an AUC drop of 0.0002 against 0.0014; on a ViT-B/16 at batch 8, 2.2× fp32's
images/s against 1.45×. Per-channel weight scales cost nothing measurable in speed over one scale per tensor and
cut the ViT-B/16's logit error 6×. Convolutions (the patch embedding, a small share of a ViT's work) and
activation × activation matmuls (attention scores) stay fp32. Figures today: benchmarks/int8.py.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def quantize_onnx(source: Path, target: Path) -> Path:
    """Write the int8 form of the fp32 ONNX graph ``source`` to ``target``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = gemm_as_matmul(onnx.load(str(source)))
    with _without_preprocessing_advice():
        quantize_dynamic(
            model,
            target,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            weight_type=QuantType.QInt8,
            extra_options={"MatMulConstBOnly": True},  # weights only: attention scores stay fp32
        )
    return target


def _plain_gemm(node: onnx.NodeProto, weights: Collection[str]) -> bool:
    """A Gemm that is exactly ``A @ op(B) + C`` with B a weight: the form a MatMul (and an Add) can replace."""
    if node.op_type != "Gemm" or len(node.input) < 2 or node.input[1] not in weights:
        return False
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    plain = {"transA": 0, "alpha": 1.0, "beta": 1.0}
    return all(attributes.get(name, value) == value for name, value in plain.items())


def gemm_as_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite each plain Gemm over a weight as MatMul (+ Add for its bias), the weight stored pre-transposed, so
    that dynamic quantization reaches it (nn.Linear on 2-D inputs, e.g. open_clip's attention output projection)."""
    graph = model.graph
    weights = {w.name: w for w in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if not _plain_gemm(node, weights.keys()):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(weights[node.input[1]])
        if any(a.name == "transB" and a.i for a in node.attribute):
            weight = weight.T
        name = f"{node.input[1]}__matmul"
        if name not in weights:  # one weight may serve several Gemms
            weights[name] = numpy_helper.from_array(np.ascontiguousarray(weight), name)
            graph.initializer.append(weights[name])
        bias = node.input[2] if len(node.input) > 2 else ""
        product = f"{node.output[0]}__matmul" if bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [product], name=f"{node.name}__matmul"))
        if bias:
            nodes.append(helper.make_node("Add", [product, bias], [node.output[0]], name=f"{node.name}__bias"))
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    unused = [w for w in graph.initializer if w.name not in used]
    for weight in unused:
        graph.initializer.remove(weight)
    return model


class _PreprocessingAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _without_preprocessing_advice() -> Iterator[None]:
    """Drop ``quantize_dynamic``'s advice to run ``quant_pre_process`` first (logged on the root logger): the
    exporter's graph is already folded, and pre-processing it changed neither the int8 graph nor its outputs."""
    advice = _PreprocessingAdvice()
    logging.getLogger().addFilter(advice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(advice)
