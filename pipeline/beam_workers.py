"""Beam DirectRunner workers forked from one process that has already imported TensorFlow and TFX.

In multi-processing mode Beam starts each SDK worker of each Beam job as a new
`python -m apache_beam.runners.worker.sdk_worker_main`, which imports TensorFlow, TFX, TFDV, TFT and TFMA again:
about 10 s of CPU per worker, most of a component's time on small data. Beam has no option to reuse or pre-start
workers, so `forked_workers()` starts one "zygote" that imports all of that once, and swaps Beam's worker command
for a small relay that asks the zygote to fork a worker with the relay's environment, working directory and
standard streams, then exits with the worker's exit code. Workers still are separate processes, as Beam asked.

    python -m pipeline.beam_workers serve FD       # the zygote, on a listening socket (started by forked_workers)
    python -m pipeline.beam_workers relay SOCKET   # Beam's worker command while forked_workers is active
"""
import contextlib
import json
import logging
import os
import selectors
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import traceback
from typing import Iterator, List, Optional, Tuple

from components import runtime

# What the components' Beam DoFns import in a worker (tfx.components pulls in TFDV, TFT and TFMA).
PRELOAD = ("apache_beam.runners.worker.sdk_worker_main", "tensorflow", "tfx.components",
           "tensorflow_transform.beam", "tensorflow_model_analysis", "tensorflow_data_validation")
_HEADER = struct.Struct("!Q")  # length of the JSON request that follows

_socket_path: Optional[str] = None  # set while forked_workers() is active in this process
_MAX_SOCKET_PATH = 107  # bytes in sockaddr_un.sun_path, less the terminating NUL
_ABSTRACT = "@"  # a socket "path" starting with this names a socket in Linux's abstract namespace
_active: Optional[Tuple[subprocess.Popen, str]] = None  # the zygote and its temp folder, while active
_handler_registered = False


def _address(path: str) -> str:
    """The address to bind or connect: the path, or for "@name" the abstract socket "\\0name"."""
    return "\0" + path[len(_ABSTRACT):] if path.startswith(_ABSTRACT) else path


def beam_worker_command() -> str:
    """The command Beam's DirectRunner (multi_processing) runs for each SDK worker."""
    return f"{sys.executable} -m apache_beam.runners.worker.sdk_worker_main"


def uses_subprocess_workers(beam_args: List[str]) -> bool:
    """Whether these Beam args run components on the DirectRunner with subprocess workers."""
    runner, mode = "DirectRunner", "in_memory"
    for i, arg in enumerate(beam_args):
        name, _, value = arg.partition("=")
        if not value and i + 1 < len(beam_args):
            value = beam_args[i + 1]
        if name == "--runner":
            runner = value
        elif name == "--direct_running_mode":
            mode = value
    return runner in ("DirectRunner", "direct", "SwitchingDirectRunner") and mode == "multi_processing"


@contextlib.contextmanager
def forked_workers(beam_args: List[str]) -> Iterator[None]:
    """While active, the DirectRunner's subprocess workers in this process are forked from a pre-imported zygote."""
    global _socket_path, _active
    if not uses_subprocess_workers(beam_args) or _socket_path is not None:
        yield
        return
    folder = tempfile.mkdtemp(prefix="iris-tfx-workers-")
    path = os.path.join(folder, "zygote.sock")
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:  # a long TMPDIR: Linux's abstract namespace has no such limit
        path = _ABSTRACT + os.path.basename(folder)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(_address(path))  # here, so relays can connect (and wait) from now on
        listener.listen(64)
        # stdin is a pipe the zygote watches: it exits when this process closes it or dies. Its own session
        # (process group, shared by the workers it forks): a terminal's Ctrl-C reaches only this process, which
        # stops them all with stop_workers().
        zygote = subprocess.Popen([sys.executable, "-m", __name__, "serve", str(listener.fileno())],
                                  stdin=subprocess.PIPE, pass_fds=[listener.fileno()], start_new_session=True)
    _active = (zygote, folder)
    _register_handler()  # after starting the zygote: this imports Beam
    _socket_path = path
    try:
        yield
    finally:
        _socket_path = None
        zygote.terminate()  # no Beam job of ours runs any more: the zygote, then any worker left, stop
        zygote.wait()
        zygote.stdin.close()
        stop_workers()


def stop_workers() -> None:
    """Kills the zygote and every worker it forked, and removes its temp folder; safe from any thread, twice."""
    global _active
    active, _active = _active, None
    if active is None:
        return
    zygote, folder = active
    with contextlib.suppress(ProcessLookupError):
        os.killpg(zygote.pid, signal.SIGKILL)  # the zygote's session: it and all its forked workers
    shutil.rmtree(folder, ignore_errors=True)


def _register_handler() -> None:
    """Replace Beam's handler for subprocess workers by one that relays to the zygote while it is active."""
    global _handler_registered
    if _handler_registered:
        return
    from apache_beam.portability import python_urns
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    @worker_handlers.WorkerHandler.register_environment(python_urns.SUBPROCESS_SDK, bytes)
    class ZygoteWorkerHandler(worker_handlers.SubprocessSdkWorkerHandler):
        def __init__(self, worker_command_line: bytes, *args) -> None:
            if _socket_path and worker_command_line.decode() == beam_worker_command():
                worker_command_line = (f"{shlex.quote(sys.executable)} -m {__name__} relay "
                                       f"{shlex.quote(_socket_path)}").encode()
            super().__init__(worker_command_line, *args)
    _handler_registered = True


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed mid-request")
        data += chunk
    return data


def relay(path: str) -> int:
    """Beam's worker command: have the zygote fork a worker with our environment and streams; return its exit code."""
    request = json.dumps({"env": dict(os.environ), "cwd": os.getcwd()}).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        try:
            conn.connect(_address(path))
        except OSError as e:
            print(f"beam worker relay: cannot reach the worker zygote at {path}: {e}", file=sys.stderr)
            return 1
        socket.send_fds(conn, [_HEADER.pack(len(request))], [0, 1, 2])
        conn.sendall(request)
        status = conn.recv(1)  # the worker's exit code; nothing if it died without saying
    if not status:
        print("beam worker relay: the forked worker died without an exit code", file=sys.stderr)
        return 1
    return status[0]


def serve(listener_fd: int) -> int:
    """The zygote: import what workers need once, then fork one worker per relay request until stdin closes."""
    listener = socket.socket(fileno=listener_fd)
    runtime.prepare()  # normally inherited from the run's process; needed when started some other way
    for module in PRELOAD:
        __import__(module)
    runtime.skip_autograph_for_tf_keras()  # TFMA's metrics in Evaluator workers trace tf_keras code
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # forked workers are reaped automatically
    with selectors.DefaultSelector() as selector:
        selector.register(listener, selectors.EVENT_READ)
        selector.register(sys.stdin, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                if key.fileobj is sys.stdin:
                    if not os.read(sys.stdin.fileno(), 4096):
                        return 0  # the parent closed the pipe or died
                    continue
                conn, _ = listener.accept()
                with conn:
                    header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
                    request = json.loads(_recv_exactly(conn, _HEADER.unpack(header)[0]))
                    if os.fork() == 0:
                        selector.close()
                        listener.close()
                        os._exit(_run_worker(conn, fds, request))
                    for fd in fds:
                        os.close(fd)


def _run_worker(conn: socket.socket, fds: List[int], request: dict) -> int:
    """In a forked child: become the relay's Beam SDK worker; report the exit code to the relay."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    logging.root.handlers.clear()  # as in a new process: the worker installs its own (to the runner)

    def exit_with_relay() -> None:  # Beam kills the relay to stop a worker: stop with it
        conn.recv(1)
        os._exit(1)
    threading.Thread(target=exit_with_relay, daemon=True).start()
    from apache_beam.runners.worker import sdk_worker_main
    code = 0
    try:
        sdk_worker_main.main(["sdk_worker_main"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: B902 - a worker's crash must reach the relay as an exit code, with its trace
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    with contextlib.suppress(OSError):
        conn.sendall(bytes([code & 0xFF]))
    return code


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("serve", "relay"):
        print(__doc__, file=sys.stderr)
        return 2
    return serve(int(argv[1])) if argv[0] == "serve" else relay(argv[1])


if __name__ == "__main__":
    sys.exit(main())
