"""PostgreSQL connections are bounded: connect timeout, keepalives, TCP user timeout, and a statement timeout.

The silent-server case needs no PostgreSQL: a loopback listener that accepts and never answers is what a server
behind dropped packets looks like to libpq once the handshake is through.
"""

from __future__ import annotations

import socket
import time

import pytest
from sqlalchemy import make_url

from deepsift.daemon.db import DbTimeouts, make_database
from deepsift.daemon.repository import VerdictRepository
from deepsift.daemon.stream.probes import DatabaseCheck
from deepsift.engines.errors import RetryableError


def test_libpq_gets_timeouts_and_keepalives_and_the_url_may_override_them():
    url = make_url("postgresql+psycopg://u@db.example/deepsift")
    args = DbTimeouts(connect_s=4.2, statement_s=30).libpq_args(url)
    assert args == {
        "connect_timeout": 5,  # libpq counts whole seconds
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 3,
        "keepalives_count": 3,
        "tcp_user_timeout": 19_000,  # the same 19 s after which keepalives give an idle connection up
        "options": "-c statement_timeout=30000",
    }
    # a parameter in the URL wins; options are joined rather than replaced
    tuned = make_url("postgresql+psycopg://u@db.example/deepsift?connect_timeout=20&options=-c%20search_path%3Dds")
    args = DbTimeouts(statement_s=0.25).libpq_args(tuned)
    assert "connect_timeout" not in args and args["options"] == "-c search_path=ds -c statement_timeout=250"
    # migrations (the default) have no statement limit
    assert "options" not in DbTimeouts().libpq_args(url)


@pytest.mark.timeout(60)
def test_a_silent_server_makes_connecting_fail_within_the_connect_timeout_as_an_outage():
    # Given a "server" that accepts connections and never says a word
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"postgresql+psycopg://postgres@127.0.0.1:{silent.getsockname()[1]}/test"
        engine = make_database(url, DbTimeouts(connect_s=2))
        try:
            # When the repository pings it
            started = time.monotonic()
            with pytest.raises(RetryableError):
                VerdictRepository(engine).ping()
            # Then it gives up after the connect timeout (psycopg's default would wait over two minutes)
            assert 1.5 < time.monotonic() - started < 10
        finally:
            engine.dispose()


def test_the_database_probe_works_on_sqlite_where_there_is_no_socket_to_abort(tmp_path):
    check = DatabaseCheck(make_database(f"sqlite:///{tmp_path / 'probe.db'}"))
    try:
        check.check()
        check.abort()  # nothing in progress, nothing to cut
        check.check()
    finally:
        check.close()
