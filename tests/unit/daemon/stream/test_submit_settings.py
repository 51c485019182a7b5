"""`daemon submit` builds valid v1 jobs; the stream settings read from the environment as documented."""

from __future__ import annotations

import hashlib
import os

import pytest
from pydantic import ValidationError

from deepsift.daemon.broker.client import client_config
from deepsift.daemon.settings import Settings
from deepsift.daemon.stream.jobs import encode_job, parse_job
from deepsift.daemon.stream.submit import SubmitOptions, jobs_for
from deepsift.engines.errors import DeepsiftError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for key in [k for k in os.environ if k.startswith("DEEPSIFT_")]:
        monkeypatch.delenv(key)


def test_files_become_file_urls_with_their_hash_and_urls_pass_through(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"jpeg")
    options = SubmitOptions(media_type="image", frames=4, metadata={"batch": 1})
    jobs = list(jobs_for([str(tmp_path / "a.jpg"), "https://cdn.example/v.mp4"], options))
    assert jobs[0].media_url == (tmp_path / "a.jpg").absolute().as_uri()
    assert jobs[0].content_sha256 == hashlib.sha256(b"jpeg").hexdigest()
    assert jobs[1].media_url == "https://cdn.example/v.mp4" and jobs[1].content_sha256 is None
    assert all(parse_job(encode_job(job)) == job for job in jobs)
    assert jobs[0].job_id != jobs[1].job_id and jobs[0].metadata == {"batch": 1} and jobs[1].options.frames == 4


def test_a_folder_contributes_its_media_files_and_a_missing_path_is_an_error(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.png").write_bytes(b"png")
    (tmp_path / "notes.txt").write_text("not media")
    jobs = list(jobs_for([str(tmp_path)], SubmitOptions()))
    assert [j.media_url.rsplit("/", 1)[1] for j in jobs] == ["b.png"]
    with pytest.raises(DeepsiftError):
        list(jobs_for([str(tmp_path / "missing.mp4")], SubmitOptions()))


def test_stream_defaults_are_the_agreed_names_and_ports():
    s = Settings()
    assert (s.kafka_topic, s.kafka_group_id, s.kafka_dead_letter_topic) == (
        "deepsift.jobs",
        "deepsift",
        "deepsift.jobs.dead-letter",
    )
    assert (s.kafka_verdict_topic, s.health_port, s.health_host, s.drain_deadline_s) == (None, 8080, "0.0.0.0", 30)
    assert s.media_roots == [] and s.http_allowed_hosts == []


def test_lists_come_from_json_or_commas_and_secrets_stay_hidden(monkeypatch):
    monkeypatch.setenv("DEEPSIFT_MEDIA_ROOTS", "/srv/a, /srv/b")
    monkeypatch.setenv("DEEPSIFT_HTTP_ALLOWED_HOSTS", '["cdn.example", "media.example"]')
    monkeypatch.setenv("DEEPSIFT_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("DEEPSIFT_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("DEEPSIFT_KAFKA_SASL_USERNAME", "deepsift")
    monkeypatch.setenv("DEEPSIFT_KAFKA_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("DEEPSIFT_KAFKA_SSL_CAFILE", "/etc/ssl/kafka-ca.pem")
    s = Settings()
    assert [str(p) for p in s.media_roots] == ["/srv/a", "/srv/b"]
    assert s.http_allowed_hosts == ["cdn.example", "media.example"]
    assert "hunter2" not in repr(s)
    config = client_config(s)
    assert config["sasl_plain_password"] == "hunter2" and config["security_protocol"] == "SASL_SSL"
    assert config["ssl_cafile"] == "/etc/ssl/kafka-ca.pem" and config["sasl_mechanism"] == "SCRAM-SHA-512"


@pytest.mark.parametrize(
    "values",
    [
        {"kafka_session_timeout_ms": 3000, "kafka_heartbeat_interval_ms": 1500},
        {"kafka_sasl_mechanism": "PLAIN"},  # SASL without a SASL protocol
        {"http_allowed_networks": ["not-a-network"]},
        {"kafka_security_protocol": "TLS"},
    ],
)
def test_inconsistent_stream_settings_are_refused(values):
    with pytest.raises(ValidationError):
        Settings(**values)
