"""The P(fake) timeline of a verdict: one line per face track (or one for whole frames) over the video's time,
the engine's threshold drawn across, its uncertain band shaded when the manifest has one.

Drawn with matplotlib's object API on an Agg canvas (no pyplot and its global state), so pages can be rendered
from the daemon's HTTP threads.
"""

from __future__ import annotations

import io
from collections import defaultdict

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from deepsift.daemon.records import FrameScoreRecord

FAKE_COLOUR = "#c62828"
REAL_COLOUR = "#2e7d32"


def timeline_png(
    frames: tuple[FrameScoreRecord, ...],
    threshold: float | None,
    band: tuple[float, float] | None = None,
    title: str = "",
) -> bytes:
    """A PNG of P(fake) per sampled frame, per track, with the threshold line; seconds when frames have times."""
    figure = Figure(figsize=(8.0, 3.0), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    use_time = bool(frames) and all(f.pts_s is not None for f in frames)
    series: dict[int | None, list[tuple[float, float]]] = defaultdict(list)
    for frame in frames:
        x = frame.pts_s if use_time and frame.pts_s is not None else float(frame.frame_index)
        series[frame.track_id].append((x, frame.p_fake))
    for track_id, points in sorted(series.items(), key=lambda item: (item[0] is None, item[0] or 0)):
        points.sort()
        label = "whole frames" if track_id is None else f"track {track_id}"
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=4, linewidth=1.5,
                  label=label)  # fmt: skip
    if band is not None:
        axes.axhspan(band[0], band[1], color="#ffb300", alpha=0.2, label="uncertain band")
    if threshold is not None:
        axes.axhline(threshold, color=FAKE_COLOUR, linestyle="--", linewidth=1.2, label=f"threshold {threshold:.3f}")
    axes.set_ylim(-0.02, 1.02)
    axes.set_ylabel("P(fake)")
    axes.set_xlabel("time in the video (s)" if use_time else "sampled frame index")
    axes.set_title(title or "P(fake) per sampled frame", fontsize=10)
    axes.grid(alpha=0.3)
    if series or threshold is not None:
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
