"""Shadow engines in the pipeline: the serving engine's regions given to each shadow (re-preprocessed only where the
contracts differ), one shadow verdict per job and shadow, never for a re-upload or for the job's own engine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepsift.daemon.pipeline import MediaJob, Outcome, engine_identity, prepare
from deepsift.daemon.pipeline.records import ReusedVerdict
from deepsift.daemon.pipeline.shadow import check_shadow
from deepsift.daemon.records import VerdictRecord
from deepsift.daemon.stream.batching import judge_batch
from deepsift.daemon.stream.metrics import StreamMetrics
from deepsift.daemon.stream.work import Work
from deepsift.engines.backends import LoadedEngine, load_engine
from deepsift.engines.errors import EngineError
from deepsift.engines.store import EngineStore


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> tuple[LoadedEngine, LoadedEngine]:
    """A serving and a shadow whole-frame engine: same regions, another normalisation and other weights."""
    import torch

    from deepsift.engines.models import build_detector
    from deepsift.engines.recipes import load_recipe
    from deepsift.trainer.build import build_onnx_engine

    base = load_recipe("demo-tiny")
    store = EngineStore(tmp_path_factory.mktemp("shadow-unit"))
    for seed, name, mean in ((0, "serving", base.input.mean), (1, "shadow", (0.4, 0.4, 0.4))):
        recipe = load_recipe("demo-tiny", input={**base.input.model_dump(), "crop_mode": "full", "mean": mean})
        torch.manual_seed(seed)
        build_onnx_engine(build_detector(recipe), recipe, store, name, threshold=0.5)
    return load_engine(store.resolve("serving")), load_engine(store.resolve("shadow"))


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(path)
    return path


def test_each_shadow_gets_the_serving_regions_preprocessed_by_its_own_contract(engines, image, judge_config):
    serving, shadow = engines
    face_mode = serving.manifest.input.model_copy(update={"crop_mode": "face"})
    contracts = (serving.manifest.input, shadow.manifest.input, face_mode)
    job = MediaJob("j", image.as_uri(), path=image)
    prepared = prepare(job, serving.manifest, None, judge_config, shadows=contracts)
    same, renormalised, other_regions = prepared.shadow_pixels
    assert same is prepared.pixels  # the serving batch itself: no second preprocessing
    assert renormalised.shape == prepared.pixels.shape and not np.allclose(renormalised, prepared.pixels)
    assert other_regions is None


def test_a_batch_gives_one_shadow_verdict_per_job_and_none_for_reuploads_or_jobs_judged_before(
    engines, image, judge_config, make_envelope
):
    serving, shadow = engines
    job = MediaJob("ok-job", image.as_uri(), path=image)
    prepared = replace(prepare(job, serving.manifest, None, judge_config, shadows=(shadow.manifest.input,)),
                       engine=serving)  # fmt: skip
    failed = replace(prepared, job=MediaJob("bad-job", "file:///x"), regions=(), pixels=None, shadow_pixels=(),
                     outcome=Outcome.error("not_media", "text"))  # fmt: skip
    earlier = VerdictRecord(job_id="old", source="kafka", media_uri="file:///o", status="ok",
                            engine=engine_identity(serving.manifest), label="real", p_fake=0.1)  # fmt: skip
    reused = replace(failed, job=MediaJob("re-upload", "file:///y"), outcome=None, reused=ReusedVerdict(7, earlier))
    batch = [Work(make_envelope(i), p.job.job_id, judge_config, p) for i, p in enumerate((prepared, failed, reused))]
    batch.append(Work(make_envelope(3), "judged-before", judge_config, stored_id=5))
    judged = judge_batch(serving, batch, StreamMetrics(), shadows=(shadow,))
    assert [len(j.shadows) for j in judged] == [1, 1, 0, 0]
    scored, refused = judged[0].shadows[0], judged[1].shadows[0]
    assert (scored.role, scored.engine.name, scored.status, len(scored.frames)) == ("shadow", "shadow", "ok", 1)
    assert scored.p_fake != judged[0].record.p_fake and scored.hashes == () and judged[0].record.role == "serving"
    assert (refused.role, refused.engine.name, refused.code) == ("shadow", "shadow", "not_media")


def test_a_shadow_promoted_to_serve_the_job_gives_it_no_second_verdict(engines, image, judge_config, make_envelope):
    serving, _ = engines
    job = MediaJob("j", image.as_uri(), path=image)
    prepared = replace(prepare(job, serving.manifest, None, judge_config, shadows=(serving.manifest.input,)),
                       engine=serving)  # fmt: skip
    judged = judge_batch(serving, [Work(make_envelope(0), "j", judge_config, prepared)], StreamMetrics(),
                         shadows=(serving,))  # fmt: skip
    assert judged[0].record.status == "ok" and judged[0].shadows == ()


def test_a_shadow_that_is_the_serving_engine_or_cuts_other_regions_is_refused(engines):
    serving, shadow = engines
    check_shadow(shadow.manifest, serving.manifest)
    with pytest.raises(EngineError, match="is the serving engine"):
        check_shadow(serving.manifest, serving.manifest)
    faces = shadow.manifest.model_copy(update={"input": shadow.manifest.input.model_copy(update={"crop_mode": "face"})})
    with pytest.raises(EngineError, match="cuts other regions"):
        check_shadow(faces, serving.manifest)


def test_a_shadow_that_fails_is_its_own_error_verdict_and_the_serving_one_stands(
    engines, image, judge_config, make_envelope
):
    serving, shadow = engines

    class Broken:
        manifest = shadow.manifest

        def run(self, pixels, masks=False):
            raise RuntimeError("shadow engine crashed")

    job = MediaJob("j", image.as_uri(), path=image)
    prepared = replace(prepare(job, serving.manifest, None, judge_config, shadows=(shadow.manifest.input,)),
                       engine=serving)  # fmt: skip
    judged = judge_batch(serving, [Work(make_envelope(0), "j", judge_config, prepared)], StreamMetrics(),
                         shadows=(Broken(),))  # fmt: skip
    assert judged[0].record.status == "ok"
    assert [(s.role, s.status, s.code) for s in judged[0].shadows] == [("shadow", "error", "inference_failed")]
