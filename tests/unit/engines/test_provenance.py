"""Content Credentials read back from media this test signs itself with the real c2pa library.

The signer is a throwaway ES256 chain (``tests/c2pa_assets.py``: a root CA and a leaf with the emailProtection EKU C2PA
accepts). The root is on no trust list, so a good signature reads "untrusted" unless the test passes the root
as ``trust_anchors``. Nothing here touches the network.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepsift.engines.media import write_video
from deepsift.engines.provenance import Credentials, read_credentials
from tests.c2pa_assets import (
    IPTC,
    SIGNER_ORG,
    Sign,
    SigningChain,
    actions,
    jpeg_segments,
    make_chain,
    signer,
    tamper_scan,
)


@pytest.fixture(scope="module")
def chain() -> SigningChain:
    return make_chain()


@pytest.fixture(scope="module")
def sign(chain: SigningChain) -> Sign:
    return signer(chain)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("provenance")


@pytest.fixture(scope="module")
def plain_jpeg(work: Path, astronaut: np.ndarray) -> Path:
    path = work / "plain.jpg"
    Image.fromarray(astronaut).save(path, "JPEG", quality=90)
    return path


@pytest.fixture(scope="module")
def plain_png(work: Path, astronaut: np.ndarray) -> Path:
    path = work / "plain.png"
    Image.fromarray(astronaut[::4, ::4]).save(path, "PNG")
    return path


@pytest.fixture(scope="module")
def plain_mp4(work: Path) -> Path:
    rng = np.random.default_rng(0)
    path = work / "plain.mp4"
    write_video(path, (rng.integers(0, 255, (64, 96, 3), dtype=np.uint8) for _ in range(10)), fps=10.0)
    return path


@pytest.fixture(scope="module")
def generated_jpeg(work: Path, plain_jpeg: Path, sign: Sign) -> Path:
    return sign(plain_jpeg, work / "generated.jpg", "image/jpeg", actions(("c2pa.created", "trainedAlgorithmicMedia")))


@pytest.fixture(scope="module")
def camera_jpeg(work: Path, plain_jpeg: Path, sign: Sign) -> Path:
    return sign(plain_jpeg, work / "camera.jpg", "image/jpeg", actions(("c2pa.created", "digitalCapture")))


def test_plain_media_has_no_credentials(plain_jpeg: Path, plain_png: Path, plain_mp4: Path) -> None:
    assert read_credentials(plain_jpeg) is None
    assert read_credentials(plain_png) is None
    assert read_credentials(plain_mp4) is None


def test_generated_jpeg_reads_untrusted_and_ai_generated(generated_jpeg: Path) -> None:
    creds = read_credentials(generated_jpeg)
    # c2pa calls this "Valid" (hashes and signature good); its only failure is the unknown root.
    assert creds == Credentials(
        state="untrusted",
        signer=SIGNER_ORG,  # c2pa's signature_info.issuer: the leaf's organization (its CN is the fallback)
        claim_generator="deepsift-tests/1.0",
        digital_source_types=("trainedAlgorithmicMedia",),
        ai_generated=True,
        ai_edited=False,
        errors=("signingCredential.untrusted",),
    )
    stored = json.loads(json.dumps(creds.as_json()))
    assert stored == {
        "state": "untrusted",
        "signer": SIGNER_ORG,
        "claim_generator": "deepsift-tests/1.0",
        "digital_source_types": ["trainedAlgorithmicMedia"],
        "ai_generated": True,
        "ai_edited": False,
        "errors": ["signingCredential.untrusted"],
    }


def test_trusted_root_makes_it_valid(generated_jpeg: Path, chain: SigningChain) -> None:
    creds = read_credentials(generated_jpeg, trust_anchors=chain.root_pem)
    assert creds is not None
    assert (creds.state, creds.errors, creds.ai_generated) == ("valid", (), True)


def test_trust_anchors_must_be_pem(generated_jpeg: Path) -> None:
    with pytest.raises(ValueError, match="trust_anchors"):
        read_credentials(generated_jpeg, trust_anchors="not a certificate")


def test_camera_capture_is_not_ai(camera_jpeg: Path) -> None:
    creds = read_credentials(camera_jpeg)
    assert creds is not None
    assert creds.state == "untrusted"
    assert creds.digital_source_types == ("digitalCapture",)
    assert not creds.ai_generated and not creds.ai_edited


def test_ai_edit_of_a_capture(work: Path, plain_jpeg: Path, sign: Sign) -> None:
    manifest = actions(("c2pa.created", "digitalCapture"), ("c2pa.edited", "compositeWithTrainedAlgorithmicMedia"))
    creds = read_credentials(sign(plain_jpeg, work / "edited.jpg", "image/jpeg", manifest))
    assert creds is not None
    assert creds.digital_source_types == ("digitalCapture", "compositeWithTrainedAlgorithmicMedia")
    assert creds.ai_edited and creds.ai_generated


def test_source_type_outside_actions_counts(work: Path, plain_jpeg: Path, sign: Sign) -> None:
    """A v1 claim whose only declaration is IPTC photo metadata's ``Iptc4xmpExt:DigitalSourceType``."""
    manifest = {
        "claim_version": 1,
        "claim_generator_info": [{"name": "legacy_app", "version": "2.0"}],
        "assertions": [
            {
                "label": "stds.iptc.photo-metadata",
                "data": {"Iptc4xmpExt:DigitalSourceType": IPTC + "trainedAlgorithmicMedia"},
            }
        ],
    }
    creds = read_credentials(sign(plain_jpeg, work / "iptc.jpg", "image/jpeg", manifest))
    assert creds is not None
    assert (creds.state, creds.claim_generator) == ("untrusted", "legacy_app/2.0")
    assert creds.digital_source_types == ("trainedAlgorithmicMedia",)
    assert creds.ai_generated and not creds.ai_edited


def test_tampered_pixels_are_invalid(work: Path, camera_jpeg: Path) -> None:
    data = tamper_scan(camera_jpeg.read_bytes())  # one scan bit flipped, no marker made: the file still decodes
    path = work / "tampered.jpg"
    path.write_bytes(data)
    Image.open(path).load()
    creds = read_credentials(path)
    assert creds is not None
    assert creds.state == "invalid"
    assert "assertion.dataHash.mismatch" in creds.errors
    assert creds.digital_source_types == ("digitalCapture",)  # the claims are still read


@pytest.mark.parametrize("offset", [60, 100, 300, 600, 1200])
def test_corrupt_manifest_never_raises(work: Path, camera_jpeg: Path, offset: int) -> None:
    data = bytearray(camera_jpeg.read_bytes())
    app11, length = jpeg_segments(bytes(data))[0xEB]
    assert offset + 40 < length
    for i in range(app11 + offset, app11 + offset + 40):
        data[i] ^= 0xA5
    path = work / f"corrupt{offset}.jpg"
    path.write_bytes(bytes(data))
    creds = read_credentials(path)
    # What a given corruption breaks (a box header, CBOR, a hashed assertion) decides between the two.
    assert creds is not None and creds.state in ("malformed", "invalid")
    assert creds.errors and all(len(e) <= 200 for e in creds.errors)


def test_corrupt_jumbf_box_is_malformed(work: Path, camera_jpeg: Path) -> None:
    data = bytearray(camera_jpeg.read_bytes())
    app11, _ = jpeg_segments(bytes(data))[0xEB]
    data[app11 + 60 : app11 + 100] = bytes(b ^ 0xA5 for b in data[app11 + 60 : app11 + 100])
    path = work / "bad_jumbf.jpg"
    path.write_bytes(bytes(data))
    creds = read_credentials(path)
    assert creds is not None and creds.state == "malformed"
    assert creds.errors[0].startswith("Verify")  # the library's message, e.g. "Verify: expected JUMD"
    assert not creds.ai_generated and creds.digital_source_types == ()


def test_truncated_manifest_is_malformed(work: Path, camera_jpeg: Path) -> None:
    data = camera_jpeg.read_bytes()
    app11, length = jpeg_segments(data)[0xEB]
    path = work / "truncated.jpg"
    path.write_bytes(data[: app11 + length // 2])
    creds = read_credentials(path)
    assert creds is not None and creds.state == "malformed" and creds.errors


def test_signed_png(work: Path, plain_png: Path, sign: Sign) -> None:
    path = sign(plain_png, work / "signed.png", "image/png", actions(("c2pa.created", "digitalCapture")))
    creds = read_credentials(path)
    assert creds is not None
    assert (creds.state, creds.signer, creds.digital_source_types) == ("untrusted", SIGNER_ORG, ("digitalCapture",))


def test_signed_mp4_and_its_tampering(work: Path, plain_mp4: Path, sign: Sign) -> None:
    manifest = actions(("c2pa.created", "trainedAlgorithmicMedia"))
    path = sign(plain_mp4, work / "signed.mp4", "video/mp4", manifest)
    creds = read_credentials(path)
    assert creds is not None
    assert (creds.state, creds.ai_generated, creds.claim_generator) == ("untrusted", True, "deepsift-tests/1.0")

    data = bytearray(path.read_bytes())
    data[data.index(b"mdat") + 200] ^= 0xFF
    tampered = work / "tampered.mp4"
    tampered.write_bytes(bytes(data))
    creds = read_credentials(tampered)
    assert creds is not None
    assert creds.state == "invalid" and "assertion.bmffHash.mismatch" in creds.errors


def test_media_type_from_bytes_or_caller(work: Path, generated_jpeg: Path, plain_mp4: Path) -> None:
    no_suffix = work / "upload.bin"
    no_suffix.write_bytes(generated_jpeg.read_bytes())
    for media_type in (None, "application/octet-stream", "image/jpeg; q=1"):
        creds = read_credentials(no_suffix, media_type)
        assert creds is not None and creds.ai_generated
    assert read_credentials(generated_jpeg.read_bytes()) == read_credentials(generated_jpeg)  # media bytes
    assert read_credentials(generated_jpeg, "video/x-matroska") is None  # the caller's type wins: not c2pa's
    assert read_credentials(plain_mp4, "video/quicktime") is None


def test_unsupported_or_empty_files_have_none(work: Path) -> None:
    text, empty = work / "notes.txt", work / "empty.jpg"
    text.write_bytes(b"no media here\n" * 50)
    empty.write_bytes(b"")
    assert read_credentials(text) is None
    assert read_credentials(empty) is None


def test_missing_file_raises_os_error(work: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_credentials(work / "missing.jpg")


def test_remote_manifest_is_never_fetched(work: Path, plain_jpeg: Path, sign: Sign) -> None:
    path = sign(
        plain_jpeg,
        work / "remote.jpg",
        "image/jpeg",
        actions(("c2pa.created", "digitalCapture")),
        "http://127.0.0.1:9/m.c2pa",
    )
    creds = read_credentials(path)
    assert creds is not None and creds.state == "malformed"
    assert "must fetch remote manifests" in creds.errors[0]


def test_concurrent_reads_agree(generated_jpeg: Path, camera_jpeg: Path, plain_jpeg: Path) -> None:
    paths = [generated_jpeg, camera_jpeg, plain_jpeg] * 8
    expected = [read_credentials(p) for p in paths]
    with ThreadPoolExecutor(max_workers=6) as pool:
        assert list(pool.map(read_credentials, paths)) == expected


def test_strings_are_cleaned_and_capped(work: Path, plain_jpeg: Path, sign: Sign) -> None:
    manifest = actions(("c2pa.created", "digitalCapture"))
    manifest["claim_generator_info"] = [{"name": "gen\u0000\u0007" + "x" * 500, "version": "1"}]
    creds = read_credentials(sign(plain_jpeg, work / "long.jpg", "image/jpeg", manifest))
    assert creds is not None and creds.claim_generator is not None
    assert creds.claim_generator.startswith("genx") and len(creds.claim_generator) == 200
    assert json.loads(json.dumps(creds.as_json()))["claim_generator"] == creds.claim_generator
