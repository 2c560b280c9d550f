"""Fixtures of the differential suite: a real Triton (2.51, from the nvidia-pytriton wheel;
TRITON_SERVER_DIR names it, as differential/triton.sh installs it) and Nereid (NEREID_BIN), each
serving the same two identity models -- Triton through its Python backend, Nereid through its
`identity` backend, with the configs of Nereid's default repository otherwise unchanged.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
MODELS = ("identity_fp32", "identity_bytes")
STARTUP_TIMEOUT_S = 120.0

# A Python-backend identity: each input, in config order, comes back as the output in the
# same position. numpy < 2 comes from the folder the installer filled (the stub was built
# against numpy 1, and it does not see PYTHONPATH).
IDENTITY_MODEL = '''
import json
import sys

sys.path.insert(0, {np1!r})
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.pairs = [(i["name"], o["name"]) for i, o in zip(config["input"], config["output"])]

    def execute(self, requests):
        responses = []
        for request in requests:
            outputs = [
                pb_utils.Tensor(out, pb_utils.get_input_tensor_by_name(request, inp).as_numpy().copy())
                for inp, out in self.pairs
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
'''


@dataclass
class Server:
    name: str
    http: str  # host:port
    grpc: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(server: Server, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{server.name} exited: {log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://{server.http}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} not ready in {STARTUP_TIMEOUT_S} s: {log.read_text()[-4000:]}")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def triton(tmp_path_factory):
    server_dir = Path(os.environ["TRITON_SERVER_DIR"])
    np1 = str(server_dir.parent / "np1")
    repo = tmp_path_factory.mktemp("triton-repo")
    for model in MODELS:
        config = (REPO_ROOT / "model-repo" / model / "config.pbtxt").read_text()
        config = config.replace('backend: "identity"', 'backend: "python"')
        (repo / model / "1").mkdir(parents=True)
        (repo / model / "config.pbtxt").write_text(config)
        (repo / model / "1" / "model.py").write_text(IDENTITY_MODEL.format(np1=np1))
    http, grpc, metrics = free_port(), free_port(), free_port()
    log = repo / "triton.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                str(server_dir / "bin" / "tritonserver"),
                "--model-repository", str(repo),
                "--backend-directory", str(server_dir / "backends"),
                "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1",
                "--metrics-address", "127.0.0.1",
                "--http-port", str(http), "--grpc-port", str(grpc),
                "--metrics-port", str(metrics), "--allow-gpu-metrics", "false",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server("triton", f"127.0.0.1:{http}", f"127.0.0.1:{grpc}")
    try:
        wait_ready(server, process, log)
        yield server
    finally:
        stop(process)


@pytest.fixture(scope="session")
def nereid(tmp_path_factory):
    binary = os.environ.get("NEREID_BIN") or str(REPO_ROOT / "target" / "debug" / "nereid")
    repo = tmp_path_factory.mktemp("nereid-repo")
    for model in MODELS:
        shutil.copytree(REPO_ROOT / "model-repo" / model, repo / model)
    port_file = repo / "ports.json"
    log = repo / "nereid.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                binary, "serve", "--model-repository", str(repo), "--host", "127.0.0.1",
                "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
                "--port-file", str(port_file),
                "--prediction-log-dir", str(repo / "prediction-log"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NEREID_LOG": "warn"},
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not port_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nereid did not start: {log.read_text()[-4000:]}")
            time.sleep(0.1)
        ports = json.loads(port_file.read_text())
        server = Server("nereid", f"127.0.0.1:{ports['http']}", f"127.0.0.1:{ports['grpc']}")
        wait_ready(server, process, log)
        yield server
    finally:
        stop(process)
