"""`waveform serve` as a process: demo start-up, health, port refusal, clean stop."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from waveform.service._proto.waveform.v1 import archive_pb2 as pb
from waveform.service._proto.waveform.v1 import archive_pb2_grpc as pb_grpc


def _serve(data: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "waveform.cli", "serve", "--data", str(data), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _read_until(proc: subprocess.Popen[str], pattern: str, timeout: float = 120.0) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if re.search(pattern, line):
            return lines
    raise AssertionError(f"no {pattern!r} in {lines}; stderr: "
                         f"{proc.stderr.read() if proc.stderr else ''}")


def _run_printed_examples(lines: list[str], cwd: Path) -> None:
    start = lines.index("try, in another terminal:") + 1
    examples = [line.strip() for line in lines[start:] if line.startswith("  ")]
    cwd.mkdir()
    env = dict(os.environ)
    ran = []
    for line in examples:
        if line.startswith(". "):  # the virtual environment's activate script
            assert Path(line[2:]).is_file() or (Path.cwd() / line[2:]).is_file(), line
            continue
        words = shlex.split(line)
        if words[0] == "export":
            env.update(w.split("=", 1) for w in words[1:])
            continue
        assert words[0] == "waveform", line
        done = subprocess.run([sys.executable, "-m", "waveform.cli", *words[1:]], cwd=cwd,
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{line}: {done.stderr}"
        ran.append(words[1])
    assert ran == ["health", "search", "summary", "trace", "export", "render"]
    assert {p.name for p in cwd.iterdir()} == {"trace.csv", "ecg.dcm", "printout.pdf"}


def test_demo_server_serves_and_stops_cleanly(tmp_path: Path) -> None:
    proc = _serve(tmp_path / "data", "--port", "0", "--demo")
    try:
        lines = _read_until(proc, r"Ctrl-C stops")
        port = int(re.search(r"on 127\.0\.0\.1:(\d+)", lines[0]).group(1))  # type: ignore[union-attr]
        token = next(line.split()[-1] for line in lines if "clinician:demo-clinic" in line)
        # The dev tokens are kept for the data folder, and it says where.
        assert any(line.startswith("dev tokens (new; kept for this data folder in ")
                   for line in lines), lines
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            hits = pb_grpc.EcgArchiveStub(channel).Search(
                pb.SearchRequest(), metadata=[("authorization", f"Bearer {token}")]).hits
            assert len(hits) == 4  # the demo ECGs, all of demo-clinic
            # ... measured before the commands to try are printed.
            assert all(h.heart_rate_bpm.HasField("value") for h in hits), hits
            assert any(re.fullmatch(r"demo: measured in \d+\.\d s", line) for line in lines)

            # Every example command it printed works as printed.
            _run_printed_examples(lines, tmp_path / "try")

            # A second server on the same port is refused, not silently sharing it.
            other = _serve(tmp_path / "other", "--port", str(port), "--demo")
            _, err = other.communicate(timeout=120)
            assert other.returncode == 1
            assert f"cannot listen on 127.0.0.1:{port}" in err
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "waveform: stopped" in out
        assert '"signal": "SIGTERM"' in err
        # Logs are JSON lines and carry no patient names.
        assert "Anonymous" not in err and "ECG^Synthetic" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_needs_tokens(tmp_path: Path) -> None:
    proc = _serve(tmp_path / "data", "--port", "0")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "--tokens FILE is required" in err
