"""Every shipped tiny recipe built into engines: ONNX Runtime and the torch backend against eager torch on every
output the detector makes, the manifest's output names, and SD²'s text tower folded away.

The full-size recipes (SigLIP-2 B/16 to SO400M, CLIP B/32 and L/14) are not exported here: their graphs are
0.3–1.6 GB and each export takes minutes on CI's two cores. ``benchmarks/`` exports B-16 and L-16. The tiny forms
(inline 2–3-block towers at 64 px, one or more per detector kind) run the same detector and export code.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepsift.engines.backends import BackendOptions, LoadedEngine, load_engine
from deepsift.engines.backends.torch_backend import TorchBackend
from deepsift.engines.errors import EngineError
from deepsift.engines.manifest import BatchRange
from deepsift.engines.models import DETECTORS, build_detector
from deepsift.engines.models.prototype import PrototypeDetector
from deepsift.engines.recipes import Recipe, load_recipe, recipe_names
from deepsift.engines.store import EngineStore
from deepsift.trainer.build import PARITY_TOLERANCES, build_engine, candidate_outputs, check_parity
from deepsift.trainer.export import golden_batch, reference_outputs

TINY = [name for name in recipe_names() if load_recipe(name).backbone.vision_cfg is not None]  # inline towers
BATCH = BatchRange(min=1, opt=2, max=4)
# fp32 |ONNX Runtime or torch backend − eager torch|: the same maths in other kernels (observed ≤ 2e-6).
FP32_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Built:
    recipe: Recipe
    model: nn.Module
    store: EngineStore  # holds "onnx" (onnxruntime, fp32) and "torch" (torch, bf16)
    loaded: dict[str, LoadedEngine] = field(default_factory=dict)

    def engine(self, name: str) -> LoadedEngine:
        """The stored engine, loaded (hash checked) once."""
        if name not in self.loaded:
            self.loaded[name] = load_engine(self.store.resolve(name))
        return self.loaded[name]


def untrained_detector(recipe: Recipe) -> nn.Module:
    """The recipe's detector with seeded random weights; a prototype detector also gets random prototypes (its
    zero prototypes would give every image the logit 0, which no parity check could tell apart)."""
    torch.manual_seed(0)
    model = build_detector(recipe)
    if isinstance(model, PrototypeDetector):
        embeddings = F.normalize(torch.randn(4, model.prototypes.shape[1]), dim=-1)
        model.set_prototypes(embeddings, torch.tensor([0, 0, 1, 1]))
    return model.eval()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Built]:
    """Each tiny recipe built once (on first use) as an ONNX Runtime fp32 engine and a torch bf16 engine."""
    cache: dict[str, Built] = {}

    def get(name: str) -> Built:
        if name not in cache:
            recipe, store = load_recipe(name), EngineStore(tmp_path_factory.mktemp(name))
            model = untrained_detector(recipe)
            build_engine(model, recipe, store, "onnx", batch=BATCH)
            build_engine(model, recipe, store, "torch", backend="torch", precision="bf16", batch=BATCH)
            cache[name] = Built(recipe, model, store)
        return cache[name]

    return get


def images(recipe: Recipe, n: int, seed: int) -> np.ndarray:
    size = recipe.input.size
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, size, size)).astype(np.float32)


def eager(built: Built, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """The detector's own outputs, read straight from ``outputs()``: class logits of a multiclass task (a binary
    detector's real/fake pair is its fake logit again), masks (as N×1×H×W) of a task with masks."""
    with torch.no_grad():
        out = built.model.eval().outputs(torch.from_numpy(pixels))
    found = {"logit": out.fake_logit.numpy()}
    if built.recipe.task.kind == "multiclass":
        found["class_logits"] = out.class_logits.numpy()
    if built.recipe.task.masks:
        found["mask_logits"] = out.mask_logits.numpy()[:, None]
    return found


def test_the_tiny_recipes_cover_every_detector_kind() -> None:
    assert {load_recipe(name).detector for name in TINY} == set(DETECTORS.names())


@pytest.mark.parametrize("recipe", TINY)
def test_onnx_runtime_gives_every_output_of_the_detector_at_any_batch_size(
    built: Callable[[str], Built], recipe: str
) -> None:
    # Given the stored ONNX artifact in a plain ONNX Runtime session
    engine = built(recipe)
    manifest = engine.engine("onnx").manifest
    session = onnxruntime.InferenceSession(
        str(engine.store.resolve("onnx") / manifest.artifact), providers=["CPUExecutionProvider"]
    )

    for n in (1, 3):  # neither the traced example's 2 nor the golden batch's 4
        # When n images run through it, asking for every output the graph has
        pixels = images(engine.recipe, n, seed=n)
        names = [o.name for o in session.get_outputs()]
        found = dict(zip(names, session.run(names, {manifest.input_name: pixels}), strict=True))

        # Then it gives exactly the detector's outputs, of the same shapes, within FP32_TOLERANCE
        expected = eager(engine, pixels)
        assert sorted(found) == sorted(expected)
        for name, want in expected.items():
            assert found[name].shape == want.shape, name
            np.testing.assert_allclose(found[name], want, rtol=0, atol=FP32_TOLERANCE, err_msg=name)


@pytest.mark.parametrize("recipe", TINY)
def test_the_manifest_names_the_outputs_of_the_task_and_their_parity(
    built: Callable[[str], Built], recipe: str
) -> None:
    # Given both built engines of the recipe
    engine = built(recipe)
    task = engine.recipe.task
    for name in ("onnx", "torch"):
        manifest = engine.engine(name).manifest

        # Then class logits are named for a multiclass task only, mask logits for a task with masks only
        assert manifest.outputs.fake_logit == "logit"
        assert (manifest.outputs.class_logits is not None) == (task.kind == "multiclass")
        assert (manifest.outputs.mask_logits is not None) == task.masks
        # and every output's parity is recorded within what its precision allows
        for output in manifest.outputs.names():
            assert (
                0 <= manifest.evaluation[f"parity_max_abs_{output}"] <= manifest.evaluation[f"parity_allowed_{output}"]
            )
        assert manifest.evaluation["parity_precision"] == manifest.backend.precision


@pytest.mark.parametrize("recipe", TINY)
def test_the_torch_backend_matches_onnx_runtime_on_cpu(built: Callable[[str], Built], recipe: str) -> None:
    # Given the ONNX Runtime engine, the torch engine (built bf16), and its same artifact run in fp32
    engine = built(recipe)
    onnx_engine, bf16 = engine.engine("onnx"), engine.engine("torch")
    fp32_manifest = bf16.manifest.model_copy(
        update={"backend": bf16.manifest.backend.model_copy(update={"precision": "fp32"})}
    )
    fp32 = LoadedEngine(
        fp32_manifest, TorchBackend(fp32_manifest, bf16.path / bf16.manifest.artifact, BackendOptions()), bf16.path
    )

    # When 6 images (more than the batch max of 4) run through each, with masks
    pixels = images(engine.recipe, 6, seed=7)
    want, got32, got16 = (e.run(pixels, masks=True) for e in (onnx_engine, fp32, bf16))

    # Then the torch backend in fp32 matches ONNX Runtime tightly, and in bf16 within the bf16 tolerance
    for output in ("fake_logit", "class_logits", "mask_logits"):
        expected, actual32, actual16 = (getattr(o, output) for o in (want, got32, got16))
        if expected is None:
            assert actual32 is None and actual16 is None
            continue
        assert actual32.dtype == actual16.dtype == np.float32
        np.testing.assert_allclose(actual32, expected, rtol=0, atol=FP32_TOLERANCE, err_msg=output)
        bf16_tolerance = PARITY_TOLERANCES["bf16"].allowed(expected)
        np.testing.assert_allclose(actual16, expected, rtol=0, atol=bf16_tolerance, err_msg=output)
        # and bf16 really ran in bf16: it does not reproduce fp32 bit for bit
        assert np.abs(actual16 - actual32).max() > 0, output


@pytest.mark.parametrize("recipe", TINY)
def test_an_engine_built_for_torch_loads_and_runs_with_class_and_mask_outputs(
    built: Callable[[str], Built], recipe: str
) -> None:
    # Given the torch engine loaded from the store (hash checked)
    engine = built(recipe)
    loaded = engine.engine("torch")
    assert isinstance(loaded.backend, TorchBackend) and loaded.manifest.backend.name == "torch"

    # When 5 images run with masks, then there is a logit per image, class logits per class for a multiclass
    # task and a mask per pixel for a task with masks
    n, size, task = 5, engine.recipe.input.size, engine.recipe.task
    out = loaded.run(images(engine.recipe, n, seed=3), masks=True)
    assert out.fake_logit.shape == (n,)
    assert (None if out.class_logits is None else out.class_logits.shape) == (
        (n, len(task.class_names)) if task.kind == "multiclass" else None
    )
    assert (None if out.mask_logits is None else out.mask_logits.shape) == ((n, size, size) if task.masks else None)
    assert all(np.isfinite(a).all() for a in (out.fake_logit, out.class_logits, out.mask_logits) if a is not None)


def test_sd2_exports_no_text_tower_and_the_same_outputs(built: Callable[[str], Built]) -> None:
    # Given SD²'s exported graphs (ONNX and torch) and its detector, whose text tower has ~3.3M parameters
    engine = built("tiny-sd2")
    clip = engine.model.clip
    text_parameters = sum(p.numel() for name, p in clip.named_parameters() if not name.startswith("visual."))
    image_side = sum(p.numel() for p in (*clip.visual.parameters(), *engine.model.clam.parameters()))
    assert text_parameters > 5 * image_side
    graph = onnx.load(str(engine.store.resolve("onnx") / "model.onnx")).graph
    program = torch.export.load(engine.store.resolve("torch") / "model.pt2")

    # Then no initializer or program weight belongs to the text tower, and all the ONNX weights together are
    # fewer than the text tower alone
    text_names = ("token_embedding", "text_projection", "ln_final", "clip.transformer.")
    assert not [i.name for i in graph.initializer if any(t in i.name for t in text_names)]
    assert not [k for k in program.state_dict if any(t in k for t in text_names)]
    assert sum(int(np.prod(i.dims)) for i in graph.initializer) < text_parameters
    # and the class logits still equal the detector's, which encodes the labels on every call (checked on every
    # output by test_onnx_runtime_gives_every_output_of_the_detector_at_any_batch_size; here once more, directly)
    pixels = images(engine.recipe, 2, seed=11)
    np.testing.assert_allclose(
        engine.engine("onnx").run(pixels).class_logits,
        eager(engine, pixels)["class_logits"],
        rtol=0,
        atol=FP32_TOLERANCE,
    )


def test_a_mask_that_changed_after_export_is_refused_by_parity(built: Callable[[str], Built]) -> None:
    # Given the multitask ONNX engine's outputs on the golden batch, and the detector with only its mask decoder's
    # last bias moved by 0.01 after the export (so only the masks differ)
    engine = built("tiny-multitask")
    manifest = engine.engine("onnx").manifest
    golden = golden_batch(engine.recipe.input.size)
    candidate = candidate_outputs(manifest, engine.store.resolve("onnx") / manifest.artifact, golden)
    moved = copy.deepcopy(engine.model)
    with torch.no_grad():
        moved.decoder.classify.bias += 0.01

    # When the candidate is checked against the moved detector, then it is refused for its masks alone
    with pytest.raises(EngineError, match=r"differs from torch at fp32 .*: mask_logits max \|Δ\| 1\.0\d*e-02") as e:
        check_parity(reference_outputs(moved, manifest.outputs, golden), candidate, "fp32", "onnx engine")
    assert "class_logits" not in str(e.value) and "logit max" not in str(e.value)
    # and it passes against the detector it came from
    check_parity(reference_outputs(engine.model, manifest.outputs, golden), candidate, "fp32")
