"""One model server in a child process, for the tests and the serving benchmark: started on 127.0.0.1 with free
ports, ready once its gRPC health check answers SERVING, stopped with SIGTERM; and copies of pushed versions."""
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import List, Optional, Union

REPO = pathlib.Path(__file__).resolve().parents[1]
PathLike = Union[str, os.PathLike]


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def iris_tfx_command() -> List[str]:
    """The installed `iris-tfx` console command (as a user runs it), or [] when it is not installed."""
    script = shutil.which("iris-tfx") or os.path.join(os.path.dirname(sys.executable), "iris-tfx")
    return [script] if os.path.exists(script) else []


def server_command(repo: PathLike = REPO) -> List[str]:
    """The server as a module of `repo`: `python -m serving`, or `python -m serving.server` in checkouts older than
    serving/__main__.py (the benchmark's --server_repo)."""
    module = "serving" if os.path.exists(os.path.join(repo, "serving", "__main__.py")) else "serving.server"
    return [sys.executable, "-m", module]


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
    """A model server child process on 127.0.0.1 with free ports, its output in `log_path`: `python -m serving` of
    `repo`, or with use_console_command `iris-tfx serve`; `args` are more server flags. stop() sends SIGTERM."""

    def __init__(self, args: List[str], log_path: PathLike, use_console_command: bool = False,
                 repo: PathLike = REPO):
        self.grpc_port, self.rest_port = free_port(), free_port()
        self.log_path = pathlib.Path(log_path)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])))
        console = iris_tfx_command() if use_console_command else []
        command = console + ["serve"] if console else server_command(repo)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [*command, "--host=127.0.0.1", f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}", *args],
            cwd=str(repo), env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.rest_url = f"http://127.0.0.1:{self.rest_port}"

    def log(self) -> str:
        """Everything the server wrote so far."""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180) -> "ServerProcess":
        """Wait until the health check answers SERVING; RuntimeError with the log if it exits or takes longer."""
        import grpc  # pylint: disable=g-import-not-at-top
        from grpc_health.v1 import health_pb2, health_pb2_grpc  # pylint: disable=g-import-not-at-top
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
        """SIGTERM (the server drains), without waiting."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60) -> Optional[int]:
        """SIGTERM, wait up to `timeout` (then SIGKILL); returns the exit code."""
        self.terminate()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code
