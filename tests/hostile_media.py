"""Hostile media for the robustness tests and ``benchmarks/scan.py --memory``, and the peak RSS of a child process.

``write_corpus(folder)`` fills a folder with media an upload pipeline must survive — decompression bombs,
frames and photos too large to decode, legitimate 4K/8K media that must be judged within the memory budget,
tiny and odd formats, broken files, and paths that are not files at all (a symlink loop, a FIFO, a dangling
link, an unreadable file) — and returns the verdict each one must get. Everything is encoded by PyAV or
Pillow (or written byte by byte where no encoder makes such a file), sized to generate in under a minute on
two cores.

``measure(command)`` runs a command under a small launcher and returns its peak RSS. Linux hands a forked
(or vforked) child the peak RSS of the process it came from, so a child of pytest or of a benchmark would
report at least their peak; the launcher is this file run as a script, importing nothing heavy, and it reports
the ``ru_maxrss`` of its own child. It also samples the RSS of the child's process tree and kills the tree
above a guard, so a budget that does not hold cannot take the shared machine's memory with it.

    python tests/hostile_media.py measure REPORT GUARD_MIB -- COMMAND...   # the launcher
    python tests/hostile_media.py corpus FOLDER                             # write the corpus, print it
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy, Pillow, PyAV and the daemon are imported where used, so the launcher stays small
    import numpy as np

    from deepsift.daemon.settings import Settings

MIB = 1 << 20

# --- expected verdicts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """The verdict a corpus entry must get: judged from its pixels (``code`` None: ok or abstained), or an
    error with ``code``. ``path_problem``: the path itself cannot be read (`daemon scan` then exits 2)."""

    code: str | None
    why: str
    path_problem: bool = False

    @property
    def judged(self) -> bool:
        return self.code is None

    def matches(self, status: str, code: str | None) -> bool:
        if self.judged:
            return status in ("ok", "abstained")
        return status == "error" and code == self.code

    def describe(self) -> str:
        return "judged (ok or abstained)" if self.judged else f"error {self.code}"


JUDGED = None


# --- the budgets of daemon.settings.Settings and the memory ceiling they imply --------------------------------


@dataclass(frozen=True)
class Budgets:
    """The media budgets a daemon runs with, as its settings give them (defaults and DEEPSIFT_* variables)."""

    max_image_pixels: int
    max_frame_pixels: int
    job_frame_budget_mb: int
    detect_max_side: int

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Budgets:
        from deepsift.daemon.settings import Settings

        s = settings or Settings()
        return cls(s.max_image_pixels, s.max_frame_pixels, s.job_frame_budget_mb, s.detect_max_side)


# Measured, not derived: a `daemon scan` of one small image with the demo engine (2 MiB of files) peaks at about
# 1085 MiB on CPU (importing the CUDA build of torch alone takes 790 MiB; then ONNX Runtime, MTCNN, SQLAlchemy).
# 1280 leaves room for allocator slack.
RUNTIME_MIB = 1280
# A loaded engine costs about 3 × its files: ONNX Runtime holds the model, its initialised weights and pre-packed
# copies (measured: the 357 MiB ViT-B/16 engine of benchmarks/scan.py adds 1024 MiB to that scan).
ENGINE_COPIES = 3
# H.264 may keep 16 reference frames, plus one per frame-decoding thread (at most CPUs + 1, FFmpeg's auto count),
# the frame being returned and one being turned upright: YUV 4:2:0 (1.5 bytes a pixel) at the source size,
# whatever size the frames are kept at afterwards.
DECODER_REFERENCE_FRAMES = 16
# A still image: PIL's decode buffer (RGB held as 4 bytes a pixel) and the RGB array made from it.
IMAGE_DECODE_BYTES_PER_PIXEL = 8
# Face crops are cut from the kept frames and held until they are preprocessed. A face and its margin covering
# half the frame is generous for uploads (the corpus's face, with the 0.3 margin, covers 42 %).
REGION_SHARE = 0.5
# MTCNN's working set per pixel of one forward pass: the float32 copy, its pyramid (factor 0.709, about 2× the
# image), P-Net maps (10, 16, 32 channels) and the R/O-Net crops. 64 is above the ~50 engines/budgets.py measured.
DETECTOR_BYTES_PER_PIXEL = 64


@dataclass(frozen=True)
class MemoryCeiling:
    """The peak RSS the budgets allow one process: what it holds without media (runtime and engine); per job
    prepared at once its frame budget, the face crops cut from it and the decoder's own frames; one face-detection
    pass. Not counted: the engine's activations at its batch size (no media budget bounds them; negligible for
    the demo engine, a few hundred MiB for ViT-B/16 at batch 32)."""

    fixed_mib: float
    frames_mib: float
    regions_mib: float
    decoder_mib: float
    detector_mib: float
    jobs_at_once: int

    @classmethod
    def of(
        cls,
        budgets: Budgets,
        fixed_mib: float,
        jobs_at_once: int = 1,
        *,
        frame_pixels: int | None = None,
        image_pixels: int | None = None,
        cpus: int | None = None,
    ) -> MemoryCeiling:
        """The ceiling for media of up to ``frame_pixels`` a video frame and ``image_pixels`` a photo (default: the
        largest the budgets admit); the decoder's share is the larger of the two's decode buffers. ``fixed_mib``:
        the process without media, measured or ``runtime_and_engine_mib``."""
        from deepsift.engines.budgets import MAX_DETECT_BATCH_PIXELS  # the most pixels MTCNN is given in one pass

        frame_pixels = budgets.max_frame_pixels if frame_pixels is None else frame_pixels
        image_pixels = budgets.max_image_pixels if image_pixels is None else image_pixels
        threads = min(16, (cpus or os.cpu_count() or 1) + 1)
        video = (DECODER_REFERENCE_FRAMES + threads + 2) * 1.5 * frame_pixels
        decoder = max(video, IMAGE_DECODE_BYTES_PER_PIXEL * image_pixels)
        frames = budgets.job_frame_budget_mb
        detector = DETECTOR_BYTES_PER_PIXEL * MAX_DETECT_BATCH_PIXELS
        return cls(fixed_mib, frames, REGION_SHARE * frames, decoder / MIB, detector / MIB, jobs_at_once)

    @property
    def per_job_mib(self) -> float:
        """What preparing one job may hold: its kept frames, their face crops and the decoder's own frames."""
        return self.frames_mib + self.regions_mib + self.decoder_mib

    @property
    def total_mib(self) -> float:
        return self.fixed_mib + self.jobs_at_once * self.per_job_mib + self.detector_mib

    def explain(self) -> str:
        return (
            f"{self.total_mib:.0f} MiB = runtime and engine {self.fixed_mib:.0f} + {self.jobs_at_once} job(s) "
            f"prepared at once × (frame budget {self.frames_mib:.0f} + face crops {self.regions_mib:.0f} + decoder "
            f"frames {self.decoder_mib:.0f}) + face detection {self.detector_mib:.0f}"
        )


def runtime_and_engine_mib(engine_dir: Path) -> float:
    """The estimated RSS of a daemon process serving the engine in ``engine_dir``, before any media."""
    return RUNTIME_MIB + ENGINE_COPIES * model_bytes(engine_dir) / MIB


def model_bytes(engine_dir: Path) -> int:
    """Bytes of an engine version's files: the weights dominate what loading it costs."""
    return sum(p.stat().st_size for p in Path(engine_dir).rglob("*") if p.is_file())


# --- writers ---------------------------------------------------------------------------------------------


def face_canvas(width: int, height: int, seed: int = 0, face_side: int | None = None) -> np.ndarray:
    """An RGB frame of smooth colour gradients with the astronaut's face photo in it (MTCNN finds it).

    Smooth content keeps encoders fast and files small at any resolution."""
    import numpy as np
    from PIL import Image
    from skimage import data

    rows = np.linspace(0, 60, height).astype(np.uint8)[:, None, None]  # uint8 broadcasts: no float frame
    columns = np.linspace(0, 60, width).astype(np.uint8)[None, :, None]
    base = np.array([60 + (seed * 37) % 60, 80, 140], dtype=np.uint8)
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    np.add(base + np.array([1, 0, 0], dtype=np.uint8) * columns, np.array([0, 1, 1], dtype=np.uint8) * rows, out=canvas)
    side = face_side or max(2, min(width, height) // 2)
    face = np.asarray(Image.fromarray(data.astronaut()).resize((side, side), Image.Resampling.BILINEAR))
    top, left = (height - side) // 2, (width - side) // 2
    canvas[top : top + side, left : left + side] = face
    return canvas


def panning(frame: np.ndarray, n: int, step: int = 4) -> Iterator[np.ndarray]:
    """``n`` frames of ``frame`` shifted sideways ``step`` pixels at a time: cheap motion for a codec."""
    import numpy as np

    for t in range(n):
        yield np.roll(frame, t * step, axis=1)


def encode_video(
    path: Path,
    frames: Iterable[np.ndarray],
    fps: float | Fraction = 25,
    codec: str = "libx264",
    options: dict[str, str] | None = None,
    faststart: bool = False,
) -> Path:
    """Encode RGB frames (one even size) with PyAV, one frame in memory at a time. x264 runs at preset
    ultrafast: hostile sizes must encode in seconds on two cores; the decoder's work is the same."""
    import av

    frames = iter(frames)
    first = next(frames)
    height, width = first.shape[:2]
    with av.open(str(path), mode="w", options={"movflags": "+faststart"} if faststart else {}) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1 << 20))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "30", **(options or {})}
        previous, frame = None, None
        for pts, rgb in enumerate(_chain(first, frames)):
            if rgb is not previous:  # a repeated frame is converted to YUV once
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=stream.pix_fmt)
                previous = rgb
            frame.pts = pts
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def write_clip(
    path: Path, width: int, height: int, frames: int, fps: float = 25.0, seed: int = 0, still: bool = False
) -> Path:
    """An H.264 clip of ``frames`` frames with a face in it, panning (or ``still``: one frame repeated, which
    encodes several times faster and decodes to frames just as large). The index is at the front, as upload
    encoders put it: a truncated copy is then a video that ends early."""
    canvas = face_canvas(width, height, seed)
    return encode_video(path, [canvas] * frames if still else panning(canvas, frames), fps, faststart=True)


def write_photo(path: Path, width: int, height: int, quality: int = 85, seed: int = 0) -> Path:
    """A JPEG photo with a face in it."""
    from PIL import Image

    Image.fromarray(face_canvas(width, height, seed)).save(path, quality=quality)
    return path


def write_flat_jpeg(path: Path, side: int) -> Path:
    """A ``side``² greyscale JPEG of flat tones: a few MB on disk, ``side``² × 3 bytes once decoded to RGB.
    (Greyscale keeps this process small while writing it: Pillow holds RGB at 4 bytes a pixel.)"""
    from PIL import Image, ImageDraw

    image = Image.new("L", (side, side), 200)
    draw = ImageDraw.Draw(image)
    for i in range(1, 8):  # nested frames of flat grey
        inset = i * side // 17
        draw.rectangle((inset, inset, side - inset, side - inset), fill=40 + 20 * i)
    image.save(path, quality=75)
    return path


def write_png_bomb(path: Path, side: int = 30_000) -> Path:
    """A valid 1-bit greyscale PNG of ``side``² zero pixels: about 110 KB on disk for 30000², yet 900 MB as
    PIL's 8-bit greyscale and 2.7 GB as RGB. The zlib stream is written row block by row block."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = bytes(1 + (side + 7) // 8)  # filter byte 0, then the row's bits
    compressor, data = zlib.compressobj(9), []
    rows_per_block = 1000
    for start in range(0, side, rows_per_block):
        data.append(compressor.compress(row * min(rows_per_block, side - start)))
    data.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(data)) + chunk(b"IEND", b"")
    )
    return path


def write_gif_screen_bomb(path: Path, side: int = 20_000) -> Path:
    """A GIF whose logical screen is ``side``² but whose only image is 1×1: decoders allocate the screen
    (FFmpeg's GIF decoder and PIL both size their canvas from it)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("P", (1, 1), 0).save(buffer, format="GIF")
    data = bytearray(buffer.getvalue())
    data[6:10] = side.to_bytes(2, "little") * 2  # the logical screen descriptor: width, height
    path.write_bytes(bytes(data))
    return path


def write_animated_gif(path: Path, width: int = 320, height: int = 240, frames: int = 12) -> Path:
    from PIL import Image

    frames_rgb = panning(face_canvas(width, height), frames, step=6)
    images = [Image.fromarray(f).convert("P", palette=Image.Palette.ADAPTIVE) for f in frames_rgb]
    images[0].save(path, save_all=True, append_images=images[1:], duration=80, loop=0)
    return path


def write_odd_images(folder: Path) -> dict[str, Expected]:
    """Small images in the formats and pixel layouts uploads arrive in besides 8-bit RGB JPEG/PNG."""
    import numpy as np
    from PIL import Image

    rgb = face_canvas(320, 240, seed=3)
    image = Image.fromarray(rgb)
    image.convert("CMYK").save(folder / "cmyk.jpg", quality=90)
    Image.fromarray(rgb[..., 1].astype(np.uint16) * 257).save(folder / "grey16.png")
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(image.size))
    rgba.save(folder / "alpha.webp", quality=80)
    image.save(folder / "photo.tiff", compression="tiff_lzw")
    image.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.bmp")
    why = "an ordinary photo in an odd pixel layout or container"
    return {
        name: Expected(JUDGED, why) for name in ("cmyk.jpg", "grey16.png", "alpha.webp", "photo.tiff", "palette.bmp")
    }


# The largest media of the corpus that the default budgets admit (to judge): 4096² video frames, an 8K photo.
LARGEST_FRAME_PIXELS = 4096 * 4096
LARGEST_IMAGE_PIXELS = 7680 * 4320


def write_corpus(folder: Path) -> dict[str, Expected]:
    """Write the hostile corpus into ``folder`` (created); the verdict each entry must get, by file name.

    Sizes are picked against the default budgets (``Budgets``): refused media exceed them by a margin,
    judged media sit inside them but above what a naive decoder holds in memory comfortably."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    b = Budgets.from_settings()
    expected: dict[str, Expected] = {}

    def add(name: str, code: str | None, why: str, path_problem: bool = False) -> Path:
        expected[name] = Expected(code, why, path_problem)
        return folder / name

    # Refused from the header: decoding them would take gigabytes.
    too_many = "too_many_pixels"
    write_flat_jpeg(add("jpeg_13000x13000.jpg", too_many, f"169 Mpx > max_image_pixels {b.max_image_pixels:,}"), 13_000)
    write_png_bomb(add("png_bomb_30000x30000.png", too_many, "900 Mpx declared by a 110 KB file"))
    write_gif_screen_bomb(add("gif_screen_20000x20000.gif", too_many, "a 400 Mpx logical screen, one 1x1 image"))
    huge = add("h264_6400x6400.mp4", too_many, f"41 Mpx frames > max_frame_pixels {b.max_frame_pixels:,}")
    encode_video(huge, [face_canvas(6400, 6400, seed=1, face_side=1024)] * 2)
    long = add("long_3h.mp4", "too_long", "3 frames 4000 s apart: 12000 s > max_duration_s, in 11 KB")
    encode_video(long, panning(face_canvas(320, 240), 3), fps=Fraction(1, 4000))
    Image.new("RGB", (1, 1), (128, 64, 32)).save(add("tiny_1x1.png", "too_small", "one pixel holds no face"))

    # Judged within the budgets: large frames decoded downscaled to the frame budget, faces found on a copy of
    # long side <= detect_max_side. 24 frames of 4096² are 1.2 GB as RGB, above job_frame_budget_mb.
    big = add("h264_4096x4096.mp4", JUDGED, "17 Mpx frames, 24 of them: above the frame budget")
    write_clip(big, 4096, 4096, 24, still=True)
    write_clip(add("uhd_3840x2160.mp4", JUDGED, "a 4K clip, 16 frames"), 3840, 2160, 16)
    write_photo(add("photo_7680x4320.jpg", JUDGED, "an 8K photo: 33 Mpx < max_image_pixels"), 7680, 4320)
    small = write_clip(add("small_320x240.mp4", JUDGED, "an ordinary clip, the control"), 320, 240, 50)
    write_animated_gif(add("animated.gif", JUDGED, "an animated GIF, decoded as video"))
    encode_video(add("mjpeg.avi", JUDGED, "Motion JPEG in AVI"), panning(face_canvas(320, 240), 10), 10, codec="mjpeg")
    expected |= write_odd_images(folder)

    # Broken files.
    add("zero_bytes.mp4", "empty_media", "no bytes").write_bytes(b"")
    rng = np.random.default_rng(19)
    add("random_bytes.mp4", "not_media", "random bytes named .mp4").write_bytes(rng.bytes(64_000))
    data = small.read_bytes()
    add("truncated.mp4", "truncated_media", "the first half of a clip").write_bytes(data[: len(data) // 2])

    # Paths that are not readable files.
    os.symlink("loop_b.mp4", add("loop_a.mp4", "symlink_loop", "a → b → a", path_problem=True))
    os.symlink("loop_a.mp4", add("loop_b.mp4", "symlink_loop", "b → a → b", path_problem=True))
    os.mkfifo(add("fifo.mp4", "not_regular_file", "a FIFO: opening it blocks until a writer comes", path_problem=True))
    os.symlink("gone.jpg", add("dangling.jpg", "not_found", "a symlink to nothing", path_problem=True))
    unreadable = folder / "unreadable.png"
    Image.fromarray(face_canvas(320, 240, seed=5)).save(unreadable)
    unreadable.chmod(0)
    if os.access(unreadable, os.R_OK):  # root reads it anyway: then it is an ordinary image
        add("unreadable.png", JUDGED, "mode 000, but this user (root) may read it")
    else:
        add("unreadable.png", "unreadable", "mode 000", path_problem=True)
    return expected


# --- peak RSS of a child process --------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """A command's exit status, output and peak RSS: ``ru_maxrss`` of the process, or the sampled RSS of its
    whole process tree where that was higher. ``killed``: the tree passed the guard and was killed."""

    returncode: int
    stdout: str
    stderr: str
    peak_mib: float
    killed: bool

    def __str__(self) -> str:
        state = "killed at the memory guard" if self.killed else f"exit {self.returncode}"
        return f"{state}, peak RSS {self.peak_mib:.0f} MiB\n--- stderr (tail) ---\n{self.stderr[-3000:]}"


def measure(
    command: Sequence[str], env: dict[str, str] | None = None, guard_mib: float = 8192, timeout: float = 600
) -> Measured:
    """Run ``command`` under the launcher; its exit status, output and peak RSS (MiB).

    The launcher and its child run in a session of their own, killed as a group on timeout."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        launcher = [sys.executable, str(Path(__file__).resolve()), "measure", str(report), str(guard_mib), "--"]
        process = subprocess.Popen(
            [*launcher, *command], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )  # fmt: skip
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            raise TimeoutError(f"{command[:3]} ran past {timeout:.0f} s:\n{stderr[-3000:]}") from None
        if not report.exists():
            raise RuntimeError(f"the launcher failed (exit {process.returncode}):\n{stderr[-3000:]}")
        result = json.loads(report.read_text())
    peak = max(result["maxrss_kib"] / 1024, result["tree_mib"])
    return Measured(result["returncode"], stdout, stderr, peak, result["killed"])


def _tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return found


def status_kib(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` figure in KiB (``VmRSS``, ``VmHWM``); 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_peak_mib(pid: int) -> float:
    """The sum of each live process's own peak (VmHWM) in ``pid``'s tree, in MiB: an upper bound of the tree's
    peak, exact for a single process. Read it before the process exits."""
    return sum(status_kib(p, "VmHWM") for p in _tree(pid)) / 1024


class TreeWatch:
    """Samples the RSS of ``pid`` and its descendants, keeps the highest, and kills the tree (by PID, leaves
    first) once it passes ``guard_mib``: a memory budget that does not hold must not take the machine."""

    def __init__(self, pid: int, guard_mib: float) -> None:
        self.pid, self.guard_mib = pid, guard_mib
        self.peak_mib, self.killed = 0.0, False

    def sample(self) -> None:
        pids = _tree(self.pid)
        rss = sum(status_kib(p, "VmRSS") for p in pids) / 1024
        self.peak_mib = max(self.peak_mib, rss)
        if rss > self.guard_mib and not self.killed:
            self.killed = True
            for pid in reversed(pids):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    @contextlib.contextmanager
    def in_background(self, interval: float = 0.05) -> Iterator[TreeWatch]:
        """Sample in a thread while the ``with`` block runs."""
        import threading

        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval):
                self.sample()

        thread = threading.Thread(target=loop, name="rss-watch", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()


def _launch(report: str, guard_mib: float, command: list[str]) -> int:
    """The launcher: run ``command`` under a ``TreeWatch``, write the report (exit status, the child's
    ru_maxrss, the highest sampled tree RSS, killed) and exit with the child's status."""
    child = subprocess.Popen(command)
    signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
    watch = TreeWatch(child.pid, guard_mib)
    while child.poll() is None:
        watch.sample()
        time.sleep(0.05)
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = {"returncode": child.returncode, "maxrss_kib": maxrss, "tree_mib": watch.peak_mib, "killed": watch.killed}
    Path(report).write_text(json.dumps(result))
    return child.returncode if child.returncode >= 0 else 128 - child.returncode


def main(argv: list[str]) -> int:
    if len(argv) >= 4 and argv[0] == "measure" and argv[3] == "--":
        return _launch(argv[1], float(argv[2]), argv[4:])
    if len(argv) == 2 and argv[0] == "corpus":
        started = time.perf_counter()
        corpus = write_corpus(Path(argv[1]))
        for name, want in corpus.items():
            path = Path(argv[1]) / name
            size = path.lstat().st_size if path.is_symlink() or not path.is_file() else path.stat().st_size
            print(f"{name:28} {size:>12,} B  {want.describe():28} {want.why}")
        print(f"{len(corpus)} entries in {time.perf_counter() - started:.1f} s")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
