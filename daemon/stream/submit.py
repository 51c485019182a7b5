"""``daemon submit``: put v1 jobs for local files and URLs on the jobs topic, so anyone can feed the stream.

Local paths become ``file://`` URLs of their absolute path (the daemons must see the same path, under
their ``media_roots``), with the content hash included so a changed file is caught. Folders contribute
their media files, as ``daemon scan`` does.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from deepsift.daemon.settings import Settings
from deepsift.daemon.stream.jobs import JobV1, encode_job, new_job
from deepsift.engines.errors import DeepsiftError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class SubmitOptions:
    media_type: Literal["auto", "video", "image"] = "auto"
    frames: int | None = None
    masks: bool = False
    metadata: dict[str, Any] | None = None
    hash_files: bool = True


def jobs_for(items: Sequence[str], options: SubmitOptions) -> Iterator[JobV1]:
    """One job per URL, per file, and per media file inside a folder, with a fresh job id each."""
    for item in items:
        if _URL.match(item):
            yield _job(item, None, options)
            continue
        for path in _local_files(Path(item)):
            sha = _sha256(path) if options.hash_files and path.is_file() else None
            yield _job(path.as_uri(), sha, options)


def _sha256(path: Path) -> str:
    """The content hash the daemon verifies (not engines.manifest's: that import pulls in torch)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _local_files(path: Path) -> list[Path]:
    if not path.exists():
        raise DeepsiftError(f"no such file or folder: {path}")
    if not path.is_dir():
        return [path.absolute()]
    from deepsift.daemon.sources.files import (
        expand_paths,
    )  # the scan's folder rule; imported only when a folder is given

    return [p.absolute() for p in expand_paths([path])]


def _job(url: str, sha: str | None, options: SubmitOptions) -> JobV1:
    return new_job(
        str(uuid.uuid4()),
        url,
        media_type=options.media_type,
        content_sha256=sha,
        frames=options.frames,
        masks=options.masks,
        metadata=options.metadata,
    )


def submit(jobs: Sequence[JobV1], settings: Settings, topic: str | None = None) -> list[str]:
    """Produce the jobs (keyed by job id) and wait until the broker acknowledged all; their ids, in order."""
    from deepsift.daemon.broker.client import KafkaError, make_producer

    servers = settings.kafka_bootstrap_servers
    try:
        producer = make_producer(settings)
    except KafkaError as e:  # no broker answered within the request timeout
        raise DeepsiftError(f"cannot reach Kafka at {servers}: {e}") from e
    try:
        futures = [
            producer.send(topic or settings.kafka_topic, key=job.job_id.encode(), value=encode_job(job)) for job in jobs
        ]
        for future in futures:
            future.get(timeout=60)
    except KafkaError as e:
        raise DeepsiftError(f"Kafka at {servers} did not take the jobs: {e}") from e
    finally:
        producer.close(timeout=10)
    return [job.job_id for job in jobs]
