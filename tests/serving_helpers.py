"""Test helpers for the serving tests: model server processes on loopback and copies of pushed versions."""
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import List, Optional

REPO = pathlib.Path(__file__).resolve().parents[1]


def iris_tfx_command() -> List[str]:
    """The installed `iris-tfx` console command (as a user runs it), else the modules directly."""
    script = shutil.which("iris-tfx") or os.path.join(os.path.dirname(sys.executable), "iris-tfx")
    return [script] if os.path.exists(script) else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_version(model_dir: pathlib.Path, base: pathlib.Path, version: int, like_tfx: bool = False) -> pathlib.Path:
    """Copy a pushed SavedModel to base/<version>: atomically (copy aside, then rename), or like_tfx as TFX's
    Pusher does it in place (everything but saved_model.pb first, saved_model.pb last)."""
    base.mkdir(parents=True, exist_ok=True)
    target = base / str(version)
    if like_tfx:
        shutil.copytree(model_dir, target, ignore=lambda d, names: [n for n in names if n == "saved_model.pb"])
        time.sleep(1.5)  # let the server poll the incomplete directory at least once
        shutil.copy2(model_dir / "saved_model.pb", target / "saved_model.pb")
        return target
    tmp = base / f".tmp-{version}"
    shutil.copytree(model_dir, tmp)
    os.rename(tmp, target)
    return target


class ServerProcess:
    """`python -m serving.server` on 127.0.0.1 with free ports; stop() sends SIGTERM and waits."""

    def __init__(self, args: List[str], log_path: pathlib.Path, use_console_command: bool = False):
        self.grpc_port, self.rest_port = free_port(), free_port()
        self.log_path = log_path
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self._log = open(log_path, "wb")
        command = iris_tfx_command() if use_console_command else []
        command = command + ["serve"] if command else [sys.executable, "-m", "serving.server"]
        self.proc = subprocess.Popen(
            [*command, "--host=127.0.0.1", f"--port={self.grpc_port}",
             f"--rest_api_port={self.rest_port}", *args], cwd=str(REPO), env=env,
            stdout=self._log, stderr=subprocess.STDOUT)
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.rest_url = f"http://127.0.0.1:{self.rest_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180) -> "ServerProcess":
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.grpc_target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        return self
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()}")

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60) -> Optional[int]:
        self.terminate()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code
