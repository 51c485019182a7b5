"""Choosing and routing to the DALI decoder, and its worker isolation — all on CPU, without DALI.

The isolation tests run real spawned worker processes with an injected frame decoder that, by the number of
frames it is asked for, echoes, exits, segfaults, hangs or raises. A fault in one video must become that video's
PyAV fallback with the right reason, and the next video must decode in a fresh worker.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from deepsift.engines import dali, dali_worker
from deepsift.engines.dali import DaliDecoder, DaliSettings, route_media
from deepsift.engines.decoders import DECODERS, DecoderOptions, choose_decoder
from deepsift.engines.errors import DeepsiftError, MediaError
from deepsift.engines.media import decode_sampled, probe_timing, sample_frame_indices, write_video

ROOT = Path(__file__).resolve().parents[3]
W, H, FPS = 160, 96, 25.0


def frames(n: int, noisy: bool = False) -> Iterator[np.ndarray]:
    noise = np.random.default_rng(0)
    for i in range(n):
        rgb = noise.integers(0, 64, (H, W, 3), dtype=np.uint8) if noisy else np.zeros((H, W, 3), np.uint8)
        rgb[: H // 2, i % W] = 255
        yield rgb


def write_vfr(path: Path, n: int) -> Path:
    """H.264 at 25 fps nominal whose every fifth frame lasts three ticks: variable frame rate."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=int(FPS))
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.time_base = Fraction(1, int(FPS))
        pts = 0
        for i, rgb in enumerate(frames(n)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, int(FPS))
            pts += 3 if i % 5 == 0 else 1
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_two_streams(path: Path, n: int) -> Path:
    with av.open(str(path), "w") as container:
        streams = [container.add_stream("libx264", rate=int(FPS)) for _ in range(2)]
        for stream in streams:
            stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i, rgb in enumerate(frames(n)):
            for stream in streams:
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts = i
                container.mux(stream.encode(frame))
        for stream in streams:
            container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("dali-clips")
    paths = {name: folder / f"{name}.mp4" for name in ("cfr", "mpeg4", "rotated")}
    write_video(paths["cfr"], frames(60), fps=FPS)
    write_video(paths["mpeg4"], frames(60), fps=FPS, codec="mpeg4")
    write_video(paths["rotated"], frames(30), fps=FPS, display_rotation=90)
    paths["mkv"] = folder / "cfr.mkv"
    write_video(paths["mkv"], frames(60), fps=FPS)
    paths["vfr"] = write_vfr(folder / "vfr.mp4", 60)
    paths["two_streams"] = write_two_streams(folder / "two.mkv", 20)
    write_video(folder / "noisy.mp4", frames(60, noisy=True), fps=FPS)  # frame data dominates the file
    data = (folder / "noisy.mp4").read_bytes()
    paths["truncated"] = folder / "truncated.mp4"
    paths["truncated"].write_bytes(data[: len(data) // 2])  # faststart: the index still promises 60 frames
    paths["garbage"] = folder / "garbage.mp4"
    paths["garbage"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return paths


# --- choosing ---------------------------------------------------------------------------------------------


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch):
    """Pretend a GPU and DALI are (or are not) present."""

    def set_machine(cuda: bool, installed: bool) -> None:
        monkeypatch.setattr(dali, "_cuda_available", lambda: cuda)
        monkeypatch.setattr(dali, "_dali_installed", lambda: installed)

    return set_machine


@pytest.mark.parametrize(
    "device, cuda, installed, expected",
    [
        ("cpu", True, True, "pyav"),  # a CPU device never gets DALI
        ("cuda", False, True, "pyav"),
        ("cuda", True, False, "pyav"),
        ("cuda", True, True, "dali"),
        ("cuda:1", True, True, "dali"),
        ("auto", True, True, "dali"),
        ("auto", False, True, "pyav"),
    ],
)
def test_auto_picks_dali_only_with_a_cuda_device_and_dali(machine, device, cuda, installed, expected) -> None:
    machine(cuda, installed)
    assert choose_decoder("auto", device) == expected


@pytest.mark.parametrize(
    "device, cuda, installed, missing",
    [
        ("cpu", True, True, "not a CUDA device"),
        ("cuda", False, True, "no CUDA device"),
        ("cuda", True, False, "nvidia.dali"),
    ],
)
def test_explicit_dali_that_cannot_run_fails_at_start_up_naming_what_is_missing(
    machine, device, cuda, installed, missing
) -> None:
    machine(cuda, installed)
    with pytest.raises(DeepsiftError, match=missing):
        choose_decoder("dali", device)


def test_pyav_and_unknown_names_bypass_the_gpu_checks(machine) -> None:
    machine(True, True)
    assert choose_decoder("pyav", "cuda") == "pyav"
    with pytest.raises(KeyError, match="registered: auto, dali, pyav"):
        choose_decoder("ffmpeg-gpu", "cuda")


def test_the_decoder_registry_imports_without_nvidia_dali_and_imports_nothing_heavy() -> None:
    # Given an interpreter where nvidia.dali cannot be imported
    code = (
        "import sys; sys.modules['nvidia'] = None; sys.modules['nvidia.dali'] = None\n"
        "from deepsift.engines.decoders import DECODERS, DecoderOptions, choose_decoder\n"
        "import deepsift.engines.dali as d\n"
        "assert {'auto', 'dali', 'pyav'} <= set(DECODERS.names())\n"
        "assert 'torch' not in sys.modules, 'importing the decoder registry must not import torch'\n"
        "assert not d._dali_installed()\n"
        "decoder = DECODERS.get('auto')(DecoderOptions(device='cpu'))\n"
        "assert 'torch' not in sys.modules, 'building a decoder for the CPU must not import torch'\n"
        "print(choose_decoder('auto', 'cpu'), decoder.name)\n"
    )
    # When the registry is imported and auto is built for the CPU, then it works and is PyAV
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["pyav", "pyav"]


def test_engines_media_imports_neither_dali_nor_the_registry() -> None:
    # Given a fresh interpreter, When the PyAV decoder's module is imported, Then no GPU decoder came with it
    code = (
        "import sys, deepsift.engines.media\n"
        "print([m for m in ('deepsift.engines.dali', 'deepsift.engines.decoders') if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_auto_on_a_cpu_machine_is_exactly_pyav(machine, clips) -> None:
    machine(False, True)
    decoder = DECODERS.get("auto")(DecoderOptions())
    try:
        auto = decoder(clips["cfr"], 8)
    finally:
        decoder.close()
    pyav = decode_sampled(clips["cfr"], 8)
    assert decoder.name == "pyav"
    assert auto.decoder == "pyav" and auto.fallback_reason is None
    assert auto.facts == pyav.facts and len(auto.frames) == len(pyav.frames) == 8
    for a, b in zip(auto.frames, pyav.frames, strict=True):
        assert (a.index, a.pts_s) == (b.index, b.pts_s)
        np.testing.assert_array_equal(a.rgb, b.rgb)


def test_auto_on_a_gpu_machine_is_dali_with_the_options_settings_and_no_worker_yet(machine) -> None:
    # Given a machine with a GPU and DALI, When auto is built for its second GPU
    machine(True, True)
    decoder = DECODERS.get("auto")(DecoderOptions(device="cuda:1", dali_timeout_s=5.0, dali_max_duration_s=60.0))
    try:
        # Then it is DALI's decoder, with the options' settings, and its worker waits for the first video
        assert isinstance(decoder, DaliDecoder) and decoder.name == "dali"
        assert (decoder.settings.device, decoder.settings.timeout_s, decoder.settings.max_duration_s) == (
            "cuda:1",
            5.0,
            60.0,
        )
        assert decoder.worker.starts == 0
    finally:
        decoder.close()


# --- routing ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "clip, reason",
    [
        ("cfr", None),
        ("mkv", None),  # Matroska declares a duration, not a count: the packets confirm it
        ("rotated", None),  # rotation is applied after DALI, as PyAV applies it
        ("vfr", "variable_frame_rate"),
        ("mpeg4", "codec:mpeg4"),
        ("two_streams", "video_streams:2"),
        ("truncated", "frame_count_mismatch"),
        ("garbage", "probe_error:not_media"),
    ],
)
def test_the_probe_routes_each_clip(clips, clip: str, reason: str | None) -> None:
    _, got = route_media(clips[clip], DaliSettings())
    assert got == reason


def test_images_empty_and_long_media_go_to_pyav(clips, tmp_path: Path) -> None:
    from PIL import Image

    image = tmp_path / "still.png"
    Image.fromarray(next(frames(1))).save(image)
    assert route_media(image, DaliSettings())[1] == "image"
    assert route_media(b"", DaliSettings())[1] == "probe_error:empty_media"
    assert route_media(clips["cfr"], DaliSettings(max_duration_s=1.0))[1] == "too_long"  # the clip lasts 2.4 s


# --- isolation: real worker processes -------------------------------------------------------------------

# The injected decoder's behaviour, chosen by how many frames a video asks for.
EXIT, SEGFAULT, HANG, RAISE = 1, 2, 3, 4


def scripted_decoder():
    """The worker's decoder factory (runs in the worker)."""
    return scripted_decode


def scripted_decode(encoded: np.ndarray, indices: Sequence[int], out: np.ndarray) -> None:
    if len(indices) == EXIT:
        os._exit(3)
    if len(indices) == SEGFAULT:
        ctypes.string_at(0)
    if len(indices) == HANG:
        time.sleep(3600)
    if len(indices) == RAISE:
        raise RuntimeError("the stream is damaged")
    for frame, index in zip(out, indices, strict=True):  # echo: each frame shows its index and the data size
        frame[:] = index
        frame[0, 0] = encoded.size % 256


def pyav_in_worker():
    """A stand-in for DALI that decodes with PyAV in the worker and returns frames as DALI does: unrotated."""
    return pyav_decode


def pyav_decode(encoded: np.ndarray, indices: Sequence[int], out: np.ndarray) -> None:
    data = encoded.tobytes()
    decoded = decode_sampled(data, len(indices))
    assert [f.index for f in decoded.frames] == list(indices)
    quarter_turns = round(probe_timing(data).rotation / 90) % 4
    for frame, sampled in zip(out, decoded.frames, strict=True):
        frame[:] = np.rot90(sampled.rgb, -quarter_turns)


def failing_factory():
    raise ImportError("libnvcuvid.so.1: cannot open shared object file")


@pytest.fixture(scope="module")
def importable_tests():
    """The spawned worker unpickles the decoder factory from this module: put the repository on its sys.path."""
    sys.path.insert(0, str(ROOT))
    yield
    sys.path.remove(str(ROOT))


@pytest.fixture(scope="module")
def isolated(importable_tests) -> Iterator[DaliDecoder]:
    decoder = DaliDecoder(DaliSettings(device="cpu", timeout_s=4.0, start_timeout_s=90.0), scripted_decoder)
    yield decoder
    decoder.close()


def assert_is_pyav(decoded, clip: Path, n: int) -> None:
    expected = decode_sampled(clip, n)
    assert decoded.decoder == "pyav" and decoded.facts == expected.facts
    for a, b in zip(decoded.frames, expected.frames, strict=True):
        assert a.index == b.index
        np.testing.assert_array_equal(a.rgb, b.rgb)


def assert_worker_decodes(decoder: DaliDecoder, clip: Path, n: int = 8) -> None:
    """The worker's echo arrives: the sampled indices, frame shapes and PyAV's timestamps."""
    decoded = decoder(clip, n)
    expected = decode_sampled(clip, n)
    assert decoded.decoder == "dali" and decoded.fallback_reason is None
    assert [f.index for f in decoded.frames] == sample_frame_indices(decoded.facts.frame_count, n)
    assert [f.pts_s for f in decoded.frames] == [f.pts_s for f in expected.frames]
    assert decoded.facts == expected.facts
    size = clip.stat().st_size % 256
    for frame, pyav_frame in zip(decoded.frames, expected.frames, strict=True):
        assert isinstance(frame.rgb, np.ndarray) and frame.rgb.shape == pyav_frame.rgb.shape
        assert frame.rgb.max() == max(frame.index, size) and size in frame.rgb


def test_the_worker_decodes_the_sampled_indices_in_its_own_process(isolated, clips) -> None:
    assert_worker_decodes(isolated, clips["cfr"])
    assert isolated.worker.pid not in (None, os.getpid())


def test_a_rotated_clip_comes_back_upright_like_pyav(isolated, clips) -> None:
    decoded = isolated(clips["rotated"], 6)
    assert decoded.decoder == "dali"
    assert decoded.frames[0].rgb.shape == decode_sampled(clips["rotated"], 6).frames[0].rgb.shape == (W, H, 3)


@pytest.mark.parametrize("fault, reason", [(EXIT, "dali_crashed"), (SEGFAULT, "dali_crashed"), (HANG, "dali_timeout")])
def test_a_worker_that_dies_or_hangs_costs_one_video_and_is_restarted(isolated, clips, fault, reason) -> None:
    # Given a healthy worker
    assert_worker_decodes(isolated, clips["cfr"])
    pid, starts = isolated.worker.pid, isolated.worker.starts
    # When a video kills or hangs it
    began = time.monotonic()
    decoded = isolated(clips["cfr"], fault)
    # Then that video is PyAV's, with the reason, in about the timeout at most
    assert decoded.fallback_reason == reason
    assert_is_pyav(decoded, clips["cfr"], fault)
    assert time.monotonic() - began < isolated.settings.timeout_s + 30
    # and the next video decodes in a fresh worker
    assert_worker_decodes(isolated, clips["cfr"])
    assert isolated.worker.pid != pid and isolated.worker.starts == starts + 1


def test_an_error_inside_the_worker_falls_back_and_keeps_the_worker(isolated, clips) -> None:
    assert_worker_decodes(isolated, clips["cfr"])
    pid = isolated.worker.pid
    decoded = isolated(clips["cfr"], RAISE)
    assert decoded.fallback_reason == "dali_error"
    assert_is_pyav(decoded, clips["cfr"], RAISE)
    assert_worker_decodes(isolated, clips["cfr"])
    assert isolated.worker.pid == pid


def test_a_full_shared_memory_sends_the_video_to_pyav_and_keeps_the_worker(isolated, clips, monkeypatch) -> None:
    # Given a healthy worker, and /dev/shm reporting less free room than the next video needs
    assert_worker_decodes(isolated, clips["cfr"])
    pid = isolated.worker.pid
    isolated.worker.close()  # drop the segment, so the next video must allocate one
    monkeypatch.setattr(dali_worker, "shm_free_bytes", lambda: 1 << 20)
    # When a video is decoded; Then PyAV decodes it with the reason, nothing was written to shared memory
    decoded = isolated(clips["cfr"], 8)
    assert decoded.fallback_reason == "shm_too_small"
    assert_is_pyav(decoded, clips["cfr"], 8)
    # And once there is room again, the worker decodes
    monkeypatch.undo()
    assert_worker_decodes(isolated, clips["cfr"])
    assert isolated.worker.pid not in (None, pid)  # close() stopped the old worker; a fresh one started


def test_media_routed_away_never_reaches_the_worker(isolated, clips) -> None:
    starts = isolated.worker.starts
    decoded = isolated(clips["vfr"], 8)
    assert decoded.fallback_reason == "variable_frame_rate"
    assert_is_pyav(decoded, clips["vfr"], 8)
    assert isolated.worker.starts == starts


@pytest.mark.parametrize("clip, code", [("truncated", "truncated_media"), ("garbage", "not_media")])
def test_media_pyav_cannot_decode_either_is_a_media_error(isolated, clips, clip, code) -> None:
    with pytest.raises(MediaError) as error:
        isolated(clips[clip], 8)
    assert error.value.code == code


@pytest.mark.parametrize("clip", ["cfr", "mkv", "rotated"])
def test_frames_through_the_worker_and_shared_memory_are_pyavs_bit_for_bit(importable_tests, clips, clip) -> None:
    # Given the worker decoding with PyAV (DALI's stand-in), when a clip goes the DALI way, from a file and from bytes
    decoder = DaliDecoder(DaliSettings(device="cpu", start_timeout_s=90.0), pyav_in_worker)
    try:
        expected = decode_sampled(clips[clip], 9)
        for source in (clips[clip], clips[clip].read_bytes()):
            decoded = decoder(source, 9)
            # Then indices, timestamps, facts and every pixel (rotation applied after the worker) are PyAV's
            assert decoded.decoder == "dali" and decoded.facts == expected.facts
            assert [(f.index, f.pts_s) for f in decoded.frames] == [(f.index, f.pts_s) for f in expected.frames]
            for a, b in zip(decoded.frames, expected.frames, strict=True):
                np.testing.assert_array_equal(a.rgb, b.rgb)
    finally:
        decoder.close()


def test_a_worker_that_cannot_start_sends_videos_to_pyav_and_backs_off(importable_tests, clips) -> None:
    # Given a decoder whose worker fails to build DALI (as on a machine without NVDEC)
    decoder = DaliDecoder(DaliSettings(device="cpu", start_timeout_s=90.0), failing_factory)
    try:
        # When two videos arrive, then both are PyAV's with the reason, and only one start was tried
        for _ in range(2):
            decoded = decoder(clips["cfr"], 4)
            assert decoded.fallback_reason == "dali_start_failed"
            assert_is_pyav(decoded, clips["cfr"], 4)
        assert decoder.worker.starts == 1
    finally:
        decoder.close()
