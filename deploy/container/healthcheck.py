"""Container HEALTHCHECK: exit 0 when ``daemon run`` answers ``GET /healthz/live`` on its health port.

It reads the daemon's own settings (environment and ``DEEPSIFT_CONFIG_FILE``), so the port it probes is
the port the daemon listens on.
"""

from __future__ import annotations

import sys
import urllib.request

LIVE_PATH = "/healthz/live"
ANY_ADDRESS = {"", "0.0.0.0", "::", "[::]"}


def live_url() -> str:
    from deepsift.daemon.settings import Settings

    settings = Settings()
    host = "127.0.0.1" if settings.health_host in ANY_ADDRESS else settings.health_host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.health_port}{LIVE_PATH}"


def main() -> int:
    url = live_url()
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return 0 if response.status == 200 else 1
    except OSError as e:  # URLError and HTTPError included
        print(f"healthcheck: {url}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
