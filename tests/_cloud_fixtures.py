"""Real servers for the cloud-archive tests, all on 127.0.0.1 and all stopped at the end of the session, even when a
test fails:

- ``cloud_archive``: the sample archive (`geo.sample_archive`: COGs made from shared/data, one per band for
  Sentinel-2) in a temporary folder.
- ``range_server``: `geo.range_server.RangeServer` over that folder (HTTP Range requests, byte counts, faults);
  ``cloud_server`` hands it to one test and clears its faults and counts afterwards.
- ``static_catalog``: a pystac static catalog of the items (assets on the Range server), served by it too.
- ``stac_api``: a real STAC API: stac-fastapi-pgstac under uvicorn on a throwaway PostgreSQL 15 cluster (initdb /
  pg_ctl in a temporary folder, as the ``postgres`` user when run as root) with the pgstac schema (pypgstac
  migrate, which needs PostGIS: Debian's ``postgresql-15-postgis-3``, installed by ``.ci/run``), loaded with the
  same items. Starting it takes about 5 s on the 2-core machine (about 2 s for the cluster and schema, the rest for
  uvicorn), once per session. Without PostgreSQL, PostGIS or the Python packages the tests that need it skip and
  say which is missing.

The fixtures are imported by ``conftest.py`` so that every test module shares one of each.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("RSMCLIP_PG_BIN", "/usr/lib/postgresql/15/bin"))
POSTGIS_CONTROL = Path("/usr/share/postgresql/15/extension/postgis.control")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to stop it when the test process dies (no orphaned web server)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def stac_api_missing() -> str | None:
    """Why a local STAC API cannot be started here, or None."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (PG_BIN / tool).is_file():
            return f"PostgreSQL 15 not found ({PG_BIN / tool}): apt-get install postgresql-15"
    if not POSTGIS_CONTROL.is_file():
        return (
            f"PostGIS not found ({POSTGIS_CONTROL}): apt-get install postgresql-15-postgis-3 (.ci/run does)"
        )
    for module, package in (
        ("stac_fastapi.pgstac", "stac-fastapi-pgstac"),
        ("pypgstac", "pypgstac[psycopg]"),
        ("uvicorn", "uvicorn"),
    ):
        try:
            __import__(module)
        except ImportError:
            return f"{package} is not installed: pip install -e '.[dev]'"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing (needed to start PostgreSQL as 'postgres')"
    return None


class PgstacApi:
    """PostgreSQL (temporary cluster) + pgstac + stac-fastapi-pgstac (uvicorn subprocess) on 127.0.0.1."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rsmclip-pgstac-"))
        self.data = self.dir / "data"
        self.pg_port = _free_port()
        self.api_port = _free_port()
        self.uvicorn: subprocess.Popen | None = None
        self._pg_started = False
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as_postgres = ["runuser", "-u", "postgres", "--"]

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/postgres"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def _pg(self, *args: str) -> None:
        result = subprocess.run([*self._as_postgres, *args], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:2])} failed: {result.stderr.strip() or result.stdout.strip()}"
            )

    def start(self, collections: list[dict], items: list[dict]) -> PgstacApi:
        self._pg(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        )
        options = f"-p {self.pg_port} -k {self.dir} -h 127.0.0.1 -c fsync=off -c synchronous_commit=off"
        self._pg(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "postgres.log"),
            "-w",
            "-o",
            options,
            "start",
        )
        self._pg_started = True
        from pypgstac.db import PgstacDB
        from pypgstac.load import Loader, Methods
        from pypgstac.migrate import Migrate

        with PgstacDB(dsn=self.dsn) as db:
            Migrate(db).run_migration()
            loader = Loader(db=db)
            loader.load_collections(iter(collections), insert_mode=Methods.insert)
            loader.load_items(iter(items), insert_mode=Methods.insert)
        env = {
            **os.environ,
            "PGUSER": "postgres",
            "PGPASSWORD": "",
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.pg_port),
            "PGDATABASE": "postgres",
            "DB_MIN_CONN_SIZE": "1",
            "DB_MAX_CONN_SIZE": "4",
        }
        log = open(self.dir / "uvicorn.log", "wb")
        atexit.register(self.stop)  # a session that dies without its teardown still stops PostgreSQL
        self.uvicorn = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "stac_fastapi.pgstac.app:create_app", "--factory"]
            + ["--host", "127.0.0.1", "--port", str(self.api_port), "--log-level", "warning"],
            cwd=self.dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        log.close()
        deadline = time.monotonic() + 90
        while True:
            if self.uvicorn.poll() is not None:
                raise RuntimeError(f"the STAC API exited: {(self.dir / 'uvicorn.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the STAC API did not answer within 90 s: {(self.dir / 'uvicorn.log').read_text()[-2000:]}"
                )
            time.sleep(0.2)

    def stop_api(self) -> None:
        """Stop the web server only (the catalog is then 'down')."""
        if self.uvicorn is not None and self.uvicorn.poll() is None:
            self.uvicorn.terminate()
            try:
                self.uvicorn.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.uvicorn.kill()
                self.uvicorn.wait(timeout=15)
        self.uvicorn = None

    def stop(self) -> None:
        """Stop the web server and PostgreSQL and remove the cluster (idempotent)."""
        self.stop_api()
        if self._pg_started:
            subprocess.run(
                [
                    *self._as_postgres,
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
                capture_output=True,
                timeout=60,
            )
            self._pg_started = False
        shutil.rmtree(self.dir, ignore_errors=True)
        atexit.unregister(self.stop)


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def cloud_archive(shared_data, tmp_path_factory):
    """The sample archive (`geo.sample_archive.build_sample_archive`) from shared/data."""
    pytest.importorskip("rasterio", reason='needs rasterio: pip install "rsmclip[geo]"')
    from modeling_rsmclip.geo.sample_archive import build_sample_archive

    return build_sample_archive(shared_data, tmp_path_factory.mktemp("cloud-archive"))


@pytest.fixture(scope="session")
def range_server(cloud_archive):
    from modeling_rsmclip.geo.range_server import RangeServer

    with RangeServer(cloud_archive.root) as server:
        yield server


@pytest.fixture
def cloud_server(range_server):
    """The session's Range server for one test: counts reset before, faults cleared after."""
    range_server.reset_counts()
    range_server.clear_faults()
    yield range_server
    range_server.clear_faults()
    range_server.reset_counts()


@pytest.fixture(scope="session")
def stac_item_dicts(cloud_archive, range_server):
    """The archive's STAC items (asset hrefs on the Range server): B04-style keys, then the red/green/blue-keyed
    Sentinel-2 variant."""
    from modeling_rsmclip.geo.sample_archive import stac_items

    return stac_items(cloud_archive, range_server.base_url) + stac_items(
        cloud_archive, range_server.base_url, naming="common"
    )


@pytest.fixture(scope="session")
def static_catalog(cloud_archive, stac_item_dicts):
    """``catalog.json`` of a static catalog of the items, inside the served folder (``static/``)."""
    pytest.importorskip("pystac", reason='needs pystac: pip install "rsmclip[stac]"')
    from modeling_rsmclip.geo.sample_archive import write_static_catalog

    return write_static_catalog(stac_item_dicts, cloud_archive.root / "static")


@pytest.fixture(scope="session")
def stac_api(stac_item_dicts):
    """A `PgstacApi` holding the items (``.url``); stopped at the end of the session."""
    missing = stac_api_missing()
    if missing:
        pytest.skip(f"no local STAC API: {missing}")
    from modeling_rsmclip.geo.sample_archive import stac_collections

    api = PgstacApi()
    try:
        start = time.monotonic()
        api.start(stac_collections(stac_item_dicts), stac_item_dicts)
        api.startup_seconds = time.monotonic() - start
        yield api
    finally:
        api.stop()
