"""Fixtures: one Nereid server per test session, plus tritonclient clients.

The server is started as

    $NEREID_BIN serve --model-repository <repo root>/model-repo \
        --host 127.0.0.1 --http-port 0 --grpc-port 0 --metrics-port 0 \
        --port-file <tmpfile>

and the fixture waits (up to 60 s) for <tmpfile>, which the server writes
atomically once all listeners are bound: {"http": P, "grpc": P, "metrics": P}.
At session end it gets SIGTERM, 30 s to exit, then SIGKILL.

Environment:
  NEREID_BIN               server binary (default <repo root>/target/debug/nereid)
  NEREID_MODEL_REPOSITORY  model repository (default <repo root>/model-repo)
  NEREID_HTTP_URL, NEREID_GRPC_URL
                           test an already-running server instead (host:port
                           each); no server is started then.
"""

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

import tritonclient
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from helpers import Transport

REPO_ROOT = Path(__file__).resolve().parents[3]
STARTUP_TIMEOUT_S = 60.0
SHUTDOWN_TIMEOUT_S = 30.0


def nereid_bin() -> Path:
    return Path(os.environ.get("NEREID_BIN") or REPO_ROOT / "target" / "debug" / "nereid")


def model_repository() -> Path:
    return Path(os.environ.get("NEREID_MODEL_REPOSITORY") or REPO_ROOT / "model-repo")


def pytest_report_header(config):
    try:
        from importlib.metadata import version

        tc = version("tritonclient")
    except Exception:  # pragma: no cover - informational only
        tc = getattr(tritonclient, "__version__", "?")
    if os.environ.get("NEREID_HTTP_URL"):
        target = "external server http={} grpc={}".format(
            os.environ.get("NEREID_HTTP_URL"), os.environ.get("NEREID_GRPC_URL")
        )
    else:
        target = f"NEREID_BIN={nereid_bin()} model repository={model_repository()}"
    return [f"tritonclient {tc}; {target}"]


@dataclass
class ServerInfo:
    http_url: str  # host:port, as tritonclient expects (no scheme)
    grpc_url: str
    metrics_url: str | None
    log_dir: Path | None = None


def _tail(path: Path, limit: int = 8000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "<unreadable>"
    text = data[-limit:].decode("utf-8", errors="replace")
    return text if text.strip() else "<empty>"


def _die_with_parent():  # runs in the child between fork and exec
    """Linux: SIGTERM the server if the pytest process dies without cleanup."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except Exception:
        pass


def _read_port_file(path: Path):
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    if not text.strip():
        return None
    try:
        ports = json.loads(text)
    except json.JSONDecodeError:
        return None  # should not happen (written atomically); retry anyway
    return ports


@pytest.fixture(scope="session")
def nereid_server(tmp_path_factory):
    http_url = os.environ.get("NEREID_HTTP_URL")
    grpc_url = os.environ.get("NEREID_GRPC_URL")
    if http_url or grpc_url:
        if not (http_url and grpc_url):
            pytest.fail("set both NEREID_HTTP_URL and NEREID_GRPC_URL", pytrace=False)
        yield ServerInfo(http_url=http_url, grpc_url=grpc_url, metrics_url=None)
        return

    binary = nereid_bin()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(
            f"Nereid server binary not found or not executable: {binary} "
            "(build it with `cargo build`, or set NEREID_BIN)",
            pytrace=False,
        )
    repo = model_repository()
    if not repo.is_dir():
        pytest.fail(f"model repository not found: {repo}", pytrace=False)

    work = tmp_path_factory.mktemp("nereid-server")
    port_file = work / "ports.json"
    stdout_path = work / "stdout.log"
    stderr_path = work / "stderr.log"
    cmd = [
        str(binary),
        "serve",
        "--model-repository",
        str(repo),
        "--host",
        "127.0.0.1",
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--port-file",
        str(port_file),
    ]
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=str(REPO_ROOT),
            # Own process group, so that stop() also reaches any children.
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )

    def signal_group(sig):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop():
        if proc.poll() is not None:
            signal_group(signal.SIGKILL)  # leftovers of a dead server, if any
            return
        signal_group(signal.SIGTERM)
        try:
            proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            signal_group(signal.SIGKILL)
            proc.wait()
            warnings.warn(
                f"nereid did not exit within {SHUTDOWN_TIMEOUT_S:.0f} s of "
                f"SIGTERM and was killed; logs in {work}"
            )

    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        ports = None
        while ports is None:
            code = proc.poll()
            if code is not None:
                pytest.fail(
                    f"nereid exited with status {code} before writing the port "
                    f"file.\ncommand: {' '.join(cmd)}\n--- stderr ---\n"
                    f"{_tail(stderr_path)}\n--- stdout ---\n{_tail(stdout_path)}",
                    pytrace=False,
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"nereid did not write {port_file} within "
                    f"{STARTUP_TIMEOUT_S:.0f} s.\ncommand: {' '.join(cmd)}\n"
                    f"--- stderr ---\n{_tail(stderr_path)}",
                    pytrace=False,
                )
            ports = _read_port_file(port_file)
            if ports is None:
                time.sleep(0.05)
        for key in ("http", "grpc", "metrics"):
            if not isinstance(ports.get(key), int) or not 0 < ports[key] < 65536:
                pytest.fail(f"bad port file contents: {ports!r}", pytrace=False)
    except BaseException:
        stop()
        raise

    info = ServerInfo(
        http_url=f"127.0.0.1:{ports['http']}",
        grpc_url=f"127.0.0.1:{ports['grpc']}",
        metrics_url=f"127.0.0.1:{ports['metrics']}",
        log_dir=work,
    )
    yield info

    crashed = proc.poll()
    stop()
    if crashed is not None:
        pytest.fail(
            f"nereid exited with status {crashed} during the test session\n"
            f"--- stderr ---\n{_tail(stderr_path)}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def http_client(nereid_server):
    client = httpclient.InferenceServerClient(
        nereid_server.http_url,
        concurrency=4,
        connection_timeout=10.0,
        network_timeout=60.0,
    )
    yield client
    client.close()


@pytest.fixture(scope="session")
def grpc_client(nereid_server):
    client = grpcclient.InferenceServerClient(nereid_server.grpc_url)
    yield client
    client.close()


@pytest.fixture(params=["http", "grpc"])
def proto(request):
    """Parametrised over the two protocols (HTTP with binary tensors)."""
    if request.param == "http":
        client = request.getfixturevalue("http_client")
        return Transport("http", "http", httpclient, client, binary=True)
    client = request.getfixturevalue("grpc_client")
    return Transport("grpc", "grpc", grpcclient, client)


@pytest.fixture(params=["http-binary", "http-json", "grpc"])
def transport(request):
    """Parametrised over HTTP+binary tensors, HTTP+JSON tensors, and gRPC."""
    if request.param.startswith("http"):
        client = request.getfixturevalue("http_client")
        return Transport(
            request.param,
            "http",
            httpclient,
            client,
            binary=request.param == "http-binary",
        )
    client = request.getfixturevalue("grpc_client")
    return Transport("grpc", "grpc", grpcclient, client)
