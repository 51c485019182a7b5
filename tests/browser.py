"""A real headless browser for the report tests: Debian's ``chromium`` (``.ci/run`` installs it), driven from its
command line. ``dom`` is the document after the page's scripts ran (``--dump-dom``); ``screenshot`` a PNG of the
rendered page. Without a chromium on PATH the browser tests skip on a laptop and fail under ``CI=true``."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    reason = "no headless browser: install Debian's chromium (apt-get install chromium)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _run(url: str, profile: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",  # CI runs as root, where chromium's sandbox refuses to start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",  # let the page's scripts and images finish
        *flags,
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"chromium failed ({result.returncode}): {result.stderr[-2000:]}"
    return result


def dom(url: str, profile: Path) -> Document:
    """The page's DOM as the browser holds it after loading (scripts run)."""
    return Document.parse(_run(url, profile, "--dump-dom").stdout)


def screenshot(url: str, png: Path, profile: Path, size: tuple[int, int] = (1280, 1800)) -> np.ndarray:
    """The rendered page as RGB pixels."""
    _run(url, profile, f"--screenshot={png}", f"--window-size={size[0]},{size[1]}")
    with Image.open(png) as image:
        return np.asarray(image.convert("RGB"))


def blank(pixels: np.ndarray) -> bool:
    """One colour (or nearly) all over: nothing was drawn."""
    return float(pixels.reshape(-1, 3).std(axis=0).max()) < 2.0


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: list[str] = field(default_factory=list)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    @property
    def content(self) -> str:
        return "".join(self.text).strip()


@dataclass
class Document:
    """The elements of a page in document order, each with the text inside it."""

    elements: list[Element]
    html: str

    @classmethod
    def parse(cls, html: str) -> Document:
        collector = _Collector()
        collector.feed(html)
        return cls(collector.elements, html)

    def by_id(self, ident: str) -> Element:
        matches = [e for e in self.elements if e.attrs.get("id") == ident]
        assert matches, f"no element with id {ident!r}"
        return matches[0]

    def has_id(self, ident: str) -> bool:
        return any(e.attrs.get("id") == ident for e in self.elements)

    def by_class(self, name: str) -> list[Element]:
        return [e for e in self.elements if name in e.classes]

    def by_tag(self, tag: str) -> list[Element]:
        return [e for e in self.elements if e.tag == tag]


VOID = {"img", "br", "meta", "link", "input", "hr", "source", "col", "area", "base", "wbr"}


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._open: list[Element] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.elements.append(element)
        if tag not in VOID:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i].tag == tag:
                del self._open[i:]
                return

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text.append(data)
