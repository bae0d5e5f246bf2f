"""``make cluster``: the archive on several servers, on this machine.

Starts Debian's PostgreSQL (the DuckLake catalog, the locator index and the audit
trail) and SeaweedFS's S3 gateway (the data files), every port on 127.0.0.1, then
two replicas of ``waveform serve`` on that one catalog and bucket; loads the demo
ECGs through the first, prints commands to try against either, and stops
everything it started on Ctrl-C (or when a replica exits).

    python -m waveform.devcluster [--replicas N] [--port 50061]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from waveform.devservers import postgres_server, seaweedfs_server

BUCKET = "waveform"


@contextmanager
def _replica(name: str, port: int, catalog: str, data: str, tokens: Path,
             env: dict[str, str], log_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = (log_dir / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "waveform.cli", "serve", "--catalog", catalog, "--data", data,
         "--port", str(port), "--tokens", str(tokens), "--replica", name],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def _wait_serving(port: int, token: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    from waveform.client import Client

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"a replica exited ({proc.returncode}):\n"
                               + log.read_text(errors="replace")[-2000:])
        try:
            with Client(f"127.0.0.1:{port}", token, timeout=2) as c:
                if c.health().get("") == "SERVING":
                    return
        except Exception:  # not listening yet
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the replica on port {port} did not start:\n"
                       + log.read_text(errors="replace")[-2000:])


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    from waveform.cli.local import demo_objects
    from waveform.cli.serve import demo_tokens
    from waveform.client import Client

    p = argparse.ArgumentParser(prog="python -m waveform.devcluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--port", type=int, default=50061, help="the first replica's gRPC port")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # stopped like Ctrl-C: everything cleaned up
    with ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="waveform-cluster-")))
        print("cluster: starting PostgreSQL and SeaweedFS on 127.0.0.1 ...", flush=True)
        pg = stack.enter_context(postgres_server())
        s3 = stack.enter_context(seaweedfs_server((BUCKET,)))
        catalog = "postgres:" + pg.create_database("archive")
        data = f"s3://{BUCKET}/archive"
        env = {**os.environ, **s3.environment()}
        tokens_file, tokens, _ = demo_tokens(home)
        clinician = tokens["clinician:demo-clinic:dr-demo"]
        device = tokens["device:demo-clinic:cart-1"]
        procs = []
        ports = [args.port + i for i in range(args.replicas)]
        for i, port in enumerate(ports):
            name = f"replica-{i + 1}"
            proc = stack.enter_context(
                _replica(name, port, catalog, data, tokens_file, env, home))
            procs.append(proc)
            # One at a time: the first creates the catalog's tables.
            _wait_serving(port, clinician, proc, home / f"{name}.log")
            print(f"cluster: {name} serving on 127.0.0.1:{port}", flush=True)
        with Client(f"127.0.0.1:{ports[0]}", device) as c:
            results = c.ingest([obj for _, obj in demo_objects()])
        print(f"cluster: {len(results)} demo ECGs stored through 127.0.0.1:{ports[0]}",
              flush=True)
        other = ports[-1]
        print(f"""
The archive on {args.replicas} servers: catalog in PostgreSQL (127.0.0.1:{pg.port}), data files in
S3 ({s3.endpoint}, bucket {BUCKET}). Try, from another terminal:

  export WAVEFORM_TOKEN={clinician}
  waveform search --server 127.0.0.1:{other} --format json     # what replica 1 stored
  waveform recent --server 127.0.0.1:{other} --within-days 3650 SYN000001
  WAVEFORM_TOKEN={device} waveform ingest --server 127.0.0.1:{ports[0]} FILE.dcm
  waveform audit verify --catalog '{catalog}'

Logs: {home}. Ctrl-C stops the replicas, SeaweedFS and PostgreSQL.
""", flush=True)
        try:
            while all(proc.poll() is None for proc in procs):
                time.sleep(0.5)
            print("cluster: a replica exited; stopping", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\ncluster: stopping", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
