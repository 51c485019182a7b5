"""``daemon scan``'s table shows every label, status and code whole, however long, and stays aligned."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from deepsift.daemon.records import EngineIdentity, VerdictRecord
from deepsift.daemon.scan import ScanResult
from deepsift.daemon.table import VerdictTable
from deepsift.engines.manifest import BackendSpec, EngineManifest, InputContract, TaskSpec

CLASSES = ("real", "synthetic", "tampered", "face_reenactment")  # the last one longer than the default column
ENGINE = EngineIdentity("multiclass-engine-with-a-long-name", 3, "b" * 64)


def manifest() -> EngineManifest:
    return EngineManifest(
        name=ENGINE.name, version=3, recipe="demo-tiny", recipe_sha256="a" * 64, detector="siglip_multiclass",
        task=TaskSpec(kind="multiclass", class_names=CLASSES), input=InputContract(size=8),
        backend=BackendSpec(name="onnxruntime", version="1"), artifact="model.onnx", artifact_sha256="b" * 64,
        weights_sha256="c" * 64, threshold=0.5,
    )  # fmt: skip


def result(name: str, status: str = "ok", **fields: object) -> ScanResult:
    record = VerdictRecord("j", "scan", f"file:///m/{name}", status, ENGINE, media_type="image", **fields)
    return ScanResult(record, 1, True, Path(name))


def table_of(*results: ScanResult) -> list[str]:
    out = io.StringIO()
    table = VerdictTable(out)
    table.header(manifest())
    for r in results:
        table.row(r)
    return out.getvalue().splitlines()


@pytest.mark.parametrize("label", [*CLASSES, "uncertain"])
def test_every_label_an_engine_can_give_is_shown_whole(label):
    lines = table_of(result("a.png", label=label, p_fake=0.75, frames_sampled=1))
    assert lines[2].split()[:6] == ["a.png", "image", "ok", label, "0.750", "1"]


def test_abstentions_errors_and_long_names_are_not_cut_and_the_columns_stay_aligned():
    # Given a long file name, an abstention, a long error code and a long class name
    long_name = "a-file-name-longer-than-its-twenty-eight-character-column.png"
    lines = table_of(
        result("short.png", label="face_reenactment", p_fake=0.9, frames_sampled=1),
        result("b.png", "abstained", code="no_face"),
        result("c.png", "error", code="unsupported_codec"),
        result(long_name, label="synthetic", p_fake=0.6, frames_sampled=1),
    )
    header, judged, abstained, error, long_row = lines[1:]
    # Then every field reads back whole
    assert judged.split() == ["short.png", "image", "ok", "face_reenactment", "0.900", "1"]
    assert abstained.split() == ["b.png", "image", "abstained", "no_face"]
    assert error.split() == ["c.png", "image", "error", "unsupported_codec"]
    assert long_row.split() == [long_name, "image", "ok", "synthetic", "0.600", "1"]
    # And the columns after the label start where the header's do, the longest label included
    assert judged.index("0.900") == header.index("p_fake")
    assert abstained.index("no_face") == error.index("unsupported_codec") == header.index("code")
