"""tests/gpu needs an NVIDIA GPU: without one its tests are deselected (not skipped), and the header says so.

Deselected tests are neither failures nor skips, so a CPU run cannot pass off an unrun GPU check as a pass.
Every test here carries the ``gpu`` marker; on a GPU machine run them with ``pytest tests/gpu``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent
_REPORTED = pytest.StashKey[bool]()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _here(item: pytest.Item) -> bool:
    return HERE in Path(item.path).parents


def _status_line() -> str:
    if _cuda():
        import torch

        return f"tests/gpu: running on {torch.cuda.get_device_name(0)}"
    return "tests/gpu: torch.cuda.is_available() is False, so every test in tests/gpu is deselected"


def pytest_report_header(config: pytest.Config) -> str:
    """Shown when pytest loads this conftest before the session starts (``pytest tests/gpu``)."""
    config.stash[_REPORTED] = True
    return _status_line()


def pytest_report_collectionfinish(config: pytest.Config) -> str | list[str]:
    """Shown after collection when this folder was found during it (``pytest`` or ``pytest tests``)."""
    return [] if config.stash.get(_REPORTED, False) else _status_line()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if _here(item)]
    for item in gpu_items:
        item.add_marker(pytest.mark.gpu)
    if gpu_items and not _cuda():
        config.hook.pytest_deselected(items=gpu_items)
        items[:] = [item for item in items if not _here(item)]


# --- test media: PyAV clips of a real portrait (skimage's astronaut) -------------------------------------

CLIP_FPS = 25


def portrait(width: int, height: int):
    """The astronaut portrait resized to ``width``×``height``: a face, skin tones and saturated colours."""
    import numpy as np
    from PIL import Image
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((width, height), Image.BILINEAR))


def panning(width: int, height: int, n: int, step: int = 4):
    """``n`` frames of the portrait sliding sideways by ``step`` pixels a frame."""
    import numpy as np

    base = portrait(width, height)
    return (np.ascontiguousarray(np.roll(base, i * step, axis=1)) for i in range(n))


def write_vfr(path: Path, width: int, height: int, n: int) -> Path:
    """H.264 at 25 fps nominal whose every fifth frame lasts three ticks: variable frame rate."""
    from fractions import Fraction

    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=CLIP_FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, CLIP_FPS)
        pts = 0
        for i, rgb in enumerate(panning(width, height, n)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, CLIP_FPS)
            pts += 3 if i % 5 == 0 else 1
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def damaged(data: bytes, seed: int = 0, fraction: float = 0.002) -> bytes:
    """The bytes with a few scattered ones overwritten past the first 4 KiB (the container header survives)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    buffer = bytearray(data)
    for i in rng.integers(4096, len(buffer), max(1, int(len(buffer) * fraction))):
        buffer[i] = int(rng.integers(0, 256))
    return bytes(buffer)


@pytest.fixture(scope="session")
def gpu_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Clips DALI should take (SD, 1080p, rotated, Matroska) and ones it must not (VFR, MPEG-4, damaged)."""
    from deepsift.engines.media import write_video

    folder = tmp_path_factory.mktemp("gpu-clips")
    clips = {
        "sd": (640, 480, {}),
        "hd": (1920, 1080, {}),
        "rotated": (640, 360, {"display_rotation": 90}),
        "gop25": (640, 360, {"keyframe_interval": 25}),
        "mpeg4": (640, 480, {"codec": "mpeg4"}),
    }
    paths = {}
    for name, (width, height, options) in clips.items():
        paths[name] = folder / f"{name}.mp4"
        write_video(paths[name], panning(width, height, 90), fps=CLIP_FPS, **options)
    paths["mkv"] = folder / "sd.mkv"
    write_video(paths["mkv"], panning(640, 480, 90), fps=CLIP_FPS)
    paths["vfr"] = write_vfr(folder / "vfr.mp4", 640, 480, 90)
    data = paths["sd"].read_bytes()
    paths["truncated"] = folder / "truncated.mp4"
    paths["truncated"].write_bytes(data[: len(data) // 2])
    paths["damaged"] = folder / "damaged.mp4"
    paths["damaged"].write_bytes(damaged(data))
    return paths
