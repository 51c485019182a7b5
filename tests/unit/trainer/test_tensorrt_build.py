"""TensorRT plan builds without TensorRT: the optimisation profile, precision flags, the ONNX contract TensorRT
relies on (checked on a real export of the tiny recipe), the timing-cache file, and the error on a machine
without TensorRT. The build itself needs an NVIDIA GPU with TensorRT and is not exercised here."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from deepsift.engines.errors import EngineError
from deepsift.engines.manifest import BatchRange
from deepsift.engines.models import build_detector
from deepsift.engines.recipes import load_recipe
from deepsift.trainer.export import INPUT_NAME, ONNX_OPSET, export_onnx, output_spec, trace
from deepsift.trainer.tensorrt_build import (
    TENSORRT_OPSETS,
    ProfileShapes,
    build_plan,
    builder_flag_names,
    check_graph_for_tensorrt,
    check_precision,
    check_profile_fits_graph,
    graph_input_dims,
    profile_shapes,
    read_timing_cache,
    write_timing_cache,
)

RECIPE = load_recipe("demo-tiny")
SIZE = RECIPE.input.size
BATCH = BatchRange(min=1, opt=2, max=4)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny recipe exported as the engine builds export it (a few seconds)."""
    spec = output_spec(RECIPE.task)
    program = trace(build_detector(RECIPE), spec, SIZE, BATCH)
    return export_onnx(program, spec, tmp_path_factory.mktemp("onnx") / "model.onnx")


def graph(
    dims: list[int | str], elem_type: int = TensorProto.FLOAT, opset: int = ONNX_OPSET, node_domain: str = ""
) -> onnx.ModelProto:
    """A one-node graph pixels → logit with the given input dims, type, opset and node domain."""
    node = helper.make_node("Identity", [INPUT_NAME], ["logit"], domain=node_domain)
    inputs = [helper.make_tensor_value_info(INPUT_NAME, elem_type, dims)]
    outputs = [helper.make_tensor_value_info("logit", elem_type, dims)]
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(node_domain, 1)] if node_domain else [])
    return helper.make_model(helper.make_graph([node], "g", inputs, outputs), opset_imports=opsets)


# --- the export TensorRT is given -------------------------------------------------------------------------------


def test_the_export_has_a_float32_input_with_a_symbolic_batch_and_fixed_3xSxS(exported: Path) -> None:
    model = onnx.load(str(exported))
    onnx.checker.check_model(model)
    batch, *rest = graph_input_dims(model, INPUT_NAME)  # graph_input_dims refuses a non-float32 input
    assert isinstance(batch, str) and batch != "?"
    assert rest == [3, SIZE, SIZE]


def test_the_export_records_an_opset_tensorrt_reads_and_only_standard_ops(exported: Path) -> None:
    model = onnx.load(str(exported))
    assert check_graph_for_tensorrt(model) == ONNX_OPSET
    assert ONNX_OPSET in TENSORRT_OPSETS


def test_the_profile_fits_the_exported_graph_and_outputs_follow_its_batch_axis(exported: Path) -> None:
    # Given the export and the profile a build would give TensorRT
    model = onnx.load(str(exported))
    dims = graph_input_dims(model, INPUT_NAME)
    shapes = profile_shapes(BATCH, SIZE)

    # Then the profile fits the input, and every output's first axis is the input's batch symbol, so TensorRT can
    # size the outputs from the profile alone
    check_profile_fits_graph(shapes, dims)
    assert [o.name for o in model.graph.output] == output_spec(RECIPE.task).names()
    assert {o.type.tensor_type.shape.dim[0].dim_param for o in model.graph.output} == {dims[0]}


@pytest.mark.parametrize("n", [BATCH.min, BATCH.max])
def test_the_export_runs_at_the_profile_min_and_max_batch(exported: Path, n: int) -> None:
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(n).uniform(-1, 1, (n, 3, SIZE, SIZE)).astype(np.float32)
    (logit,) = session.run(["logit"], {INPUT_NAME: pixels})
    assert logit.shape == (n,) and np.isfinite(logit).all()


def test_int8_is_refused_for_our_export_which_has_no_quantize_nodes(exported: Path) -> None:
    with pytest.raises(EngineError, match=r"int8 needs an explicitly quantized ONNX graph.*Build fp16 or bf16"):
        check_precision("int8", onnx.load(str(exported)))


def test_int8_is_accepted_for_a_graph_with_quantize_and_dequantize_nodes() -> None:
    x = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["n", 3, 4, 4])
    y = helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["n", 3, 4, 4])
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [0.1])
    nodes = [
        helper.make_node("QuantizeLinear", [INPUT_NAME, "scale"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "scale"], ["logit"]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "qdq", [x], [y], [scale]))
    assert check_precision("int8", model) == ("FP16", "INT8")


# --- pure pieces ------------------------------------------------------------------------------------------------


def test_profile_shapes_span_the_batch_range_at_the_image_size() -> None:
    assert profile_shapes(BatchRange(min=1, opt=8, max=32), 224) == ProfileShapes(
        min=(1, 3, 224, 224), opt=(8, 3, 224, 224), max=(32, 3, 224, 224)
    )
    with pytest.raises(ValueError, match="image size"):
        profile_shapes(BATCH, 0)


@pytest.mark.parametrize(
    ("precision", "flags"), [("fp32", ()), ("fp16", ("FP16",)), ("bf16", ("BF16",)), ("int8", ("FP16", "INT8"))]
)
def test_each_precision_sets_its_builder_flags(precision: str, flags: tuple[str, ...]) -> None:
    assert builder_flag_names(precision) == flags


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        builder_flag_names("fp8")


@pytest.mark.parametrize(
    ("dims", "expected"),
    [
        ([4, 3, SIZE, SIZE], r"batch is fixed at 4, but the profile asks for \[1, 2, 4\]"),
        (["n", 3, SIZE + 1, SIZE + 1], rf"axis 2 is fixed at {SIZE + 1}"),
        (["n", 3, SIZE], r"rank 3"),
    ],
    ids=["fixed-batch", "other-size", "rank"],
)
def test_a_profile_the_graph_contradicts_is_refused(dims: list[int | str], expected: str) -> None:
    with pytest.raises(EngineError, match=expected):
        check_profile_fits_graph(profile_shapes(BATCH, SIZE), tuple(dims))


def test_an_input_that_is_not_float32_or_not_there_is_refused() -> None:
    with pytest.raises(EngineError, match="FLOAT16"):
        graph_input_dims(graph(["n", 3, SIZE, SIZE], elem_type=TensorProto.FLOAT16), INPUT_NAME)
    with pytest.raises(EngineError, match="no input 'image'"):
        graph_input_dims(graph(["n", 3, SIZE, SIZE]), "image")


def test_an_opset_or_op_tensorrt_cannot_parse_is_refused() -> None:
    with pytest.raises(EngineError, match=r"opset 21 is outside 9\.\.20"):
        check_graph_for_tensorrt(graph(["n", 3, SIZE, SIZE], opset=21))
    with pytest.raises(EngineError, match=r"custom ops .*com\.example::Identity"):
        check_graph_for_tensorrt(graph(["n", 3, SIZE, SIZE], node_domain="com.example"))


def test_the_timing_cache_starts_empty_and_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "timing.cache"
    assert read_timing_cache(path) == b"" and read_timing_cache(None) == b""
    write_timing_cache(path, b"first")
    write_timing_cache(path, b"second")
    assert read_timing_cache(path) == b"second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["timing.cache"]


def test_building_without_tensorrt_says_what_to_install_or_build_instead(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a valid export on a machine where `import tensorrt` fails
    monkeypatch.setitem(sys.modules, "tensorrt", None)

    # When a plan is built, then the error names the gpu extra and the other backends, and no plan is written
    with pytest.raises(EngineError, match=r"TensorRT is not installed.*`gpu` extra.*onnxruntime or torch engine"):
        build_plan(exported, tmp_path / "model.plan", BATCH, SIZE, "fp16", tmp_path / "timing.cache")
    assert not (tmp_path / "model.plan").exists()
