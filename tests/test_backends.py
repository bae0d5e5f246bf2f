"""The storage backends: DuckLake on a real PostgreSQL with its data files in a real
S3 server (SeaweedFS), the DuckDB extensions from pip, and the S3 settings read
the way AWS tools read them."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import S3_BUCKET, Backend
from tests.servers import PostgresServer, S3Server, seaweedfs_server
from waveform.errors import StorageError
from waveform.store import durable
from waveform.store.files import FileOps, LocalFiles, S3Files, files_for
from waveform.store.lake import (
    ALIAS,
    EXTENSIONS,
    Extension,
    connect,
    extension_path,
    load_extension,
)
from waveform.store.s3 import S3Settings, split_s3_url
from waveform.store.testing import RecordingFiles

# --------------------------------------------------------------------------------------
# The extensions come from pip, offline.


@pytest.mark.parametrize("name", sorted(EXTENSIONS))
def test_pip_extension_loads_offline(name: str, tmp_path: Path) -> None:
    path = extension_path(name)
    assert path is not None and path.is_file(), f"pip package of {name} not installed"
    # An empty extension directory and no auto-install: only the pip binary can load.
    con = duckdb.connect(config={"autoinstall_known_extensions": False,
                                 "autoload_known_extensions": False,
                                 "extension_directory": str(tmp_path)})
    try:
        assert load_extension(con, name) == str(path)
        loaded = {r[0] for r in con.execute(
            "SELECT extension_name FROM duckdb_extensions() WHERE loaded").fetchall()}
        assert (EXTENSIONS[name].file if name == "postgres" else name) in loaded
    finally:
        con.close()
    assert list(tmp_path.iterdir()) == []  # nothing was installed (downloaded) there


def test_missing_extension_names_the_pip_package_and_downloads_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(EXTENSIONS, "spatial", Extension(
        "spatial", "duckdb-extension-spatial", "duckdb_extension_spatial", "spatial"))
    con = duckdb.connect(config={"autoinstall_known_extensions": False,
                                 "extension_directory": str(tmp_path)})
    try:
        with pytest.raises(StorageError, match=r"pip install duckdb-extension-spatial==1\.5\.5"):
            load_extension(con, "spatial")
    finally:
        con.close()
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------
# S3Settings: environment and shared files.


def _aws_files(tmp_path: Path, credentials: str = "", config: str = "") -> dict[str, str]:
    cred, conf = tmp_path / "credentials", tmp_path / "config"
    cred.write_text(credentials)
    conf.write_text(config)
    return {"AWS_SHARED_CREDENTIALS_FILE": str(cred), "AWS_CONFIG_FILE": str(conf)}


def test_settings_from_environment_variables(tmp_path: Path) -> None:
    env = {**_aws_files(tmp_path), "AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "s'cr",
           "AWS_SESSION_TOKEN": "tok", "AWS_REGION": "eu-north-1",
           "AWS_DEFAULT_REGION": "us-west-2", "AWS_ENDPOINT_URL": "http://127.0.0.1:8333/"}
    s = S3Settings.from_environment(env, home=tmp_path)
    assert s == S3Settings("AKID", "s'cr", "tok", "eu-north-1", "http://127.0.0.1:8333")
    assert (s.use_ssl, s.scheme, s.endpoint, s.path_style) == (
        False, "http", "127.0.0.1:8333", True)
    assert s.duckdb_secret() == (
        "CREATE OR REPLACE SECRET waveform_s3 (TYPE s3, KEY_ID 'AKID', SECRET 's''cr', "
        "SESSION_TOKEN 'tok', REGION 'eu-north-1', ENDPOINT '127.0.0.1:8333', "
        "URL_STYLE 'path', USE_SSL false)")
    assert s.pyarrow_options() == {
        "scheme": "http", "access_key": "AKID", "secret_key": "s'cr", "session_token": "tok",
        "region": "eu-north-1", "endpoint_override": "127.0.0.1:8333",
        "force_virtual_addressing": False}
    assert "s'cr" not in repr(s) and "tok" not in repr(s)


def test_settings_region_and_endpoint_fallbacks(tmp_path: Path) -> None:
    env = {**_aws_files(tmp_path), "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b",
           "AWS_DEFAULT_REGION": "us-west-2", "AWS_ENDPOINT_URL": "http://ignored:1",
           "AWS_ENDPOINT_URL_S3": "https://s3.example.org:9000"}
    s = S3Settings.from_environment(env, home=tmp_path)
    assert (s.region, s.endpoint_url, s.use_ssl, s.endpoint) == (
        "us-west-2", "https://s3.example.org:9000", True, "s3.example.org:9000")
    assert s.duckdb_secret().endswith(
        "REGION 'us-west-2', ENDPOINT 's3.example.org:9000', URL_STYLE 'path', USE_SSL true)")


def test_settings_for_aws_itself_use_tls_and_virtual_hosts(tmp_path: Path) -> None:
    env = {**_aws_files(tmp_path), "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b",
           "AWS_REGION": "eu-west-1"}
    s = S3Settings.from_environment(env, home=tmp_path)
    assert (s.endpoint, s.use_ssl, s.path_style) == (None, True, False)
    assert s.duckdb_secret() == ("CREATE OR REPLACE SECRET waveform_s3 (TYPE s3, KEY_ID 'a', "
                                 "SECRET 'b', REGION 'eu-west-1', USE_SSL true)")
    assert s.pyarrow_options() == {"scheme": "https", "access_key": "a", "secret_key": "b",
                                   "session_token": None, "region": "eu-west-1"}


def test_settings_from_the_shared_files_of_the_default_profile(tmp_path: Path) -> None:
    aws = tmp_path / ".aws"
    aws.mkdir()
    (aws / "credentials").write_text(
        "[default]\naws_access_key_id = FILEKEY\naws_secret_access_key = FILESECRET\n"
        "[other]\naws_access_key_id = OTHER\naws_secret_access_key = OTHERSECRET\n")
    (aws / "config").write_text(
        "[default]\nregion = eu-central-1\nendpoint_url = http://10.0.0.5:8333\n"
        "[profile other]\nregion = ap-south-1\n")
    # No AWS_* variable at all: ~/.aws of ``home`` is read.
    s = S3Settings.from_environment({}, home=tmp_path)
    assert s == S3Settings("FILEKEY", "FILESECRET", None, "eu-central-1",
                           "http://10.0.0.5:8333")
    assert (s.use_ssl, s.path_style, s.endpoint) == (False, True, "10.0.0.5:8333")
    # The variables win over the files, one setting at a time.
    s = S3Settings.from_environment({"AWS_REGION": "us-east-2"}, home=tmp_path)
    assert (s.access_key_id, s.region) == ("FILEKEY", "us-east-2")


def test_settings_of_a_named_profile_in_files_named_by_the_environment(
    tmp_path: Path,
) -> None:
    env = {**_aws_files(
        tmp_path,
        credentials="[default]\naws_access_key_id = D\naws_secret_access_key = DS\n"
                    "[archive]\naws_access_key_id = K\naws_secret_access_key = S\n"
                    "aws_session_token = T\n",
        config="[default]\nregion = eu-west-3\n"
               "[profile archive]\nregion = eu-north-1\nendpoint_url = http://store:9000\n",
    ), "AWS_PROFILE": "archive"}
    s = S3Settings.from_environment(env, home=tmp_path / "elsewhere")
    assert s == S3Settings("K", "S", "T", "eu-north-1", "http://store:9000")


def test_settings_keys_in_the_config_file_and_none_at_all(tmp_path: Path) -> None:
    env = _aws_files(tmp_path, config="[default]\naws_access_key_id = CK\n"
                                      "aws_secret_access_key = CS\n")
    assert S3Settings.from_environment(env, home=tmp_path).access_key_id == "CK"
    none = S3Settings.from_environment(_aws_files(tmp_path / ".."), home=tmp_path)
    assert none == S3Settings() and none.needs_aws_extension
    assert none.duckdb_secret() == (
        "CREATE OR REPLACE SECRET waveform_s3 (TYPE s3, PROVIDER credential_chain, "
        "USE_SSL true)")


def test_settings_refuse_half_a_key_pair_and_a_bad_endpoint(tmp_path: Path) -> None:
    files = _aws_files(tmp_path)
    with pytest.raises(StorageError, match="AWS_SECRET_ACCESS_KEY is missing"):
        S3Settings.from_environment({**files, "AWS_ACCESS_KEY_ID": "a"}, home=tmp_path)
    bad = _aws_files(tmp_path, credentials="[default]\naws_secret_access_key = s\n")
    with pytest.raises(StorageError, match=r"\[default\] in .*credentials give half an S3 key "
                                           "pair: aws_access_key_id is missing"):
        S3Settings.from_environment(bad, home=tmp_path)
    files = _aws_files(tmp_path)
    with pytest.raises(StorageError, match=r"'127\.0\.0\.1:8333' is not http\(s\)://host"):
        S3Settings.from_environment({**files, "AWS_ENDPOINT_URL": "127.0.0.1:8333"},
                                    home=tmp_path)


def test_split_s3_url() -> None:
    assert split_s3_url("s3://bucket/a/b.parquet") == ("bucket", "a/b.parquet")
    assert split_s3_url("s3://bucket") == ("bucket", "")
    with pytest.raises(StorageError, match="names no bucket"):
        split_s3_url("s3:///key")
    with pytest.raises(StorageError, match="is not an S3 URL"):
        split_s3_url("/local/path")


# --------------------------------------------------------------------------------------
# DuckLake on each backend, through lake.connect.

TABLE = pa.table({"id": pa.array(range(100), pa.int64()),
                  "name": pa.array([f"ecg-{i}" for i in range(100)])})


def _prepare(backend: Backend) -> FileOps:
    files = backend.files()
    files.makedirs(durable.table_dir(files, backend.data_path, "t"))
    return files


def test_lake_creates_commits_reads_back_and_reopens(backend: Backend) -> None:
    files = _prepare(backend)
    assert isinstance(files, S3Files if backend.name == "cluster" else LocalFiles)
    lake = connect(backend.catalog, backend.data_path)
    try:
        assert lake.con.execute(
            "SELECT current_setting('autoinstall_known_extensions')").fetchone() == (False,)
        cur = lake.cursor()
        cur.execute(f"CREATE TABLE {ALIAS}.t (id BIGINT, name VARCHAR)")
        # Our own data file, published and committed by the durability order.
        written = durable.commit_tables(cur, files, backend.data_path, {"t": TABLE})
        # And DuckDB's own writes (an INSERT of more rows than DuckLake inlines).
        cur.execute(f"INSERT INTO {ALIAS}.t SELECT i, 'sql-' || i FROM range(100, 1100) r(i)")
        expected = (1100, sum(range(1100)))
        assert cur.execute(f"SELECT count(*), sum(id) FROM {ALIAS}.t").fetchone() == expected
        paths = dict(cur.execute(
            f"SELECT path, path_is_relative FROM __ducklake_metadata_{ALIAS}.ducklake_data_file"
        ).fetchall())
    finally:
        lake.close()
    # ducklake_add_data_files keeps the full path (a URL for S3); DuckDB's own files are
    # named relative to the data path.
    assert paths[written["t"]] is False
    assert written["t"].startswith(backend.data_path + "t/")
    assert sum(1 for relative in paths.values() if relative) >= 1
    with pq.ParquetFile(files.open_input(written["t"])) as pf:
        assert pf.read().equals(TABLE)

    # Reopened by another connection with the same data path: everything is there.
    lake = connect(backend.catalog, backend.data_path)
    try:
        assert lake.cursor().execute(
            f"SELECT count(*), sum(id) FROM {ALIAS}.t").fetchone() == expected
        assert lake.cursor().execute(
            f"SELECT name FROM {ALIAS}.t WHERE id = 42").fetchone() == ("ecg-42",)
    finally:
        lake.close()
    # An existing catalog is never pointed at other files.
    other = backend.data_path.rstrip("/") + "-other/"
    with pytest.raises(StorageError, match="does not match existing data path"):
        connect(backend.catalog, other)


def test_publish_on_s3_writes_the_final_name_directly(backend: Backend) -> None:
    files = _prepare(backend)

    class Recording(RecordingFiles):
        atomic_rename = type(files).atomic_rename

    rec = Recording(files)
    directory = durable.table_dir(files, backend.data_path, "t")
    path = durable.publish(rec, directory, TABLE, durable.ParquetOptions())
    if backend.name == "cluster":
        assert rec.log == [("write", path), ("fsync", path)]
    else:
        tmp = files.join(directory, "." + path.rsplit("/", 1)[1] + ".tmp")
        assert rec.log == [("write", tmp), ("fsync", tmp), ("rename", path)]
    assert files.list(directory) == [path]
    with pq.ParquetFile(files.open_input(path)) as pf:
        assert pf.read().equals(TABLE)


def test_two_writers_commit_to_one_postgres_catalog_at_once(
    cluster_backend: Backend,
) -> None:
    """Two connections (as two replicas) appending files to one table at once: every
    commit lands (DuckLake retries a snapshot id taken by the other). Only a
    PostgreSQL catalog is shared; one process owns a DuckDB-file catalog."""
    backend = cluster_backend
    files = _prepare(backend)
    setup = connect(backend.catalog, backend.data_path)
    setup.cursor().execute(f"CREATE TABLE {ALIAS}.t (id BIGINT, name VARCHAR)")
    setup.close()
    per_writer, errors = 8, []
    lakes = [connect(backend.catalog, backend.data_path) for _ in range(2)]

    def write(w: int) -> None:
        cur = lakes[w].cursor()
        try:
            for i in range(per_writer):
                base = (w * per_writer + i) * 100
                t = pa.table({"id": pa.array(range(base, base + 100), pa.int64()),
                              "name": pa.array(["x"] * 100)})
                durable.commit_tables(cur, files, backend.data_path, {"t": t})
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert errors == []
        n = 2 * per_writer * 100
        assert lakes[0].cursor().execute(
            f"SELECT count(*), count(DISTINCT id), sum(id) FROM {ALIAS}.t"
        ).fetchone() == (n, n, sum(range(n)))
    finally:
        for lake in lakes:
            lake.close()


def test_replicas_opening_a_fresh_postgres_catalog_at_once_all_open(
    cluster_backend: Backend,
) -> None:
    """Each of three connections started together creates DuckLake's metadata tables
    in the empty database; the ones PostgreSQL fails attach again and find them."""
    backend, errors = cluster_backend, []
    start = threading.Barrier(3)
    lakes = []

    def open_one() -> None:
        start.wait()
        try:
            lakes.append(connect(backend.catalog, backend.data_path))
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert errors == [] and len(lakes) == 3
        lakes[0].cursor().execute(f"CREATE TABLE {ALIAS}.t (id BIGINT)")
        lakes[0].cursor().execute(f"INSERT INTO {ALIAS}.t VALUES (5)")
        assert [lake.cursor().execute(f"SELECT id FROM {ALIAS}.t").fetchall()
                for lake in lakes] == [[(5,)]] * 3
    finally:
        for lake in lakes:
            lake.close()


# --------------------------------------------------------------------------------------
# The servers themselves.


def test_s3_files_from_the_environment_reach_the_server(cluster_backend: Backend) -> None:
    backend = cluster_backend
    files = S3Files()  # the AWS_* variables the backend fixture set
    p = backend.data_path + "probe.bin"
    files.write(p, b"abc")
    assert files.read_range(p, 1, 5) == b"bc"
    assert split_s3_url(p)[0] == S3_BUCKET
    assert files_for(backend.data_path).list(backend.data_path) == [p]


def _listening(pids: set[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket that processes ``pids`` listen on."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                hex_addr, hex_port = local.split(":")
                raw = bytes.fromhex(hex_addr)
                if len(raw) == 4:
                    address = socket.inet_ntop(socket.AF_INET, raw[::-1])
                else:  # four little-endian 32-bit words
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    address = socket.inet_ntop(socket.AF_INET6, words)
                out.add((address, int(hex_port, 16)))
    return out


def _tree(pid: int) -> set[int]:
    """``pid`` and its descendants."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = {pid}
    for child in children.read_text().split() if children.exists() else ():
        found |= _tree(int(child))
    return found


def test_servers_listen_on_loopback_only(postgres: PostgresServer, s3: S3Server) -> None:
    assert postgres.psql("SELECT inet_server_addr()").strip() == "127.0.0.1"
    postmaster = int((postgres.data / "postmaster.pid").read_text().split()[0])
    assert _listening({postmaster}) == {("127.0.0.1", postgres.port)}
    assert s3.process is not None
    weed = _listening(_tree(s3.process.pid))
    assert {address for address, _ in weed} == {"127.0.0.1"}
    # Every listener on a port we chose (none left at a default such as 8333 or 6060).
    assert {port for _, port in weed} <= set(s3.ports.values())
    assert ("127.0.0.1", s3.ports["s3.port"]) in weed


def test_s3_outage_fails_the_write_and_the_same_client_recovers(tmp_path: Path) -> None:
    """Its own server (the session's stays up): stopped, a publish fails with
    `StorageError` (safe to retry) within seconds; started again in place, the same
    `S3Files` writes and reads, and what was stored before is there."""
    with seaweedfs_server(("outage",)) as server:
        files = S3Files(S3Settings(server.access_key, server.secret_key, None, server.region,
                                   server.endpoint))
        files.write("s3://outage/d/before", b"kept")
        server.stop()
        t0 = time.monotonic()
        with pytest.raises(StorageError, match=r"^write of .+ failed: .+ in bucket .outage."):
            durable.publish(files, "s3://outage/d", TABLE, durable.ParquetOptions())
        assert time.monotonic() - t0 < 10
        server.start()
        assert files.read_range("s3://outage/d/before", 0, 10) == b"kept"
        path = durable.publish(files, "s3://outage/d", TABLE, durable.ParquetOptions())
        assert files.list("s3://outage/d") == sorted(["s3://outage/d/before", path])


def test_postgres_stops_and_starts_in_place(postgres: PostgresServer) -> None:
    postgres.create_database("restart_probe")
    postgres.psql("CREATE TABLE k (v int); INSERT INTO k VALUES (7)", "restart_probe")
    t0 = time.monotonic()
    postgres.stop()
    with pytest.raises(RuntimeError, match="psql"):
        postgres.psql("SELECT 1")
    postgres.start()
    assert postgres.psql("SELECT v FROM k", "restart_probe").strip() == "7"
    assert time.monotonic() - t0 < 30
