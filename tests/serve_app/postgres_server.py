"""A throwaway PostgreSQL server for the tests, from Debian's `postgresql` package (`.ci/run` installs it)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import count
from pathlib import Path

from skyreels.parallel.group import free_port

START_TIMEOUT_S = 60
_databases = count()


def find_binaries() -> Path | None:
    """The newest Debian PostgreSQL bin directory with initdb and pg_ctl, if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


@dataclass(frozen=True)
class PostgresServer:
    bin_dir: Path
    data_dir: Path
    port: int

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        root = self.data_dir.parent
        options = f"-h 127.0.0.1 -p {self.port} -k {root} -F -c max_connections=200"
        subprocess.run(_as_postgres([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-o", options, "-l",
                                     str(root / "server.log"), "-w", "-t", str(START_TIMEOUT_S), "start"]),
                       check=True, capture_output=True, timeout=START_TIMEOUT_S + 30)

    def stop(self, mode: str = "fast") -> None:
        """Raises when the server cannot be stopped: an outage test must not go on against a running server."""
        subprocess.run(_as_postgres([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w",
                                     "stop"]), check=True, capture_output=True, timeout=60)

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """The server down for the block (a fast shutdown, as a restart makes), then up again on its port."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def new_database(self) -> str:
        """A fresh, empty database's URL."""
        import psycopg

        name = f"test_{os.getpid()}_{next(_databases)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


def _as_postgres(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the package's `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def running_server(bin_dir: Path, root: Path) -> Iterator[PostgresServer]:
    """initdb in `root`, a server on a free loopback port (trust auth, no fsync), stopped at the end."""
    data_dir = root / "data"
    root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        for parent in root.parents:  # the postgres user must reach its directory
            if parent.stat().st_mode & 0o001 == 0 and parent != Path("/"):
                parent.chmod(parent.stat().st_mode | 0o001)
    subprocess.run(_as_postgres([str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres",
                                 "--auth=trust", "--no-sync"]), check=True, capture_output=True, timeout=120)
    server = PostgresServer(bin_dir, data_dir, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop("immediate")
