"""Starting and stopping a Space (space/app.py) on a free local port, for tests/test_space*.py."""
import importlib.util
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import ModuleType

SPACE = Path(__file__).resolve().parents[1] / "space"


def space_module(name: str) -> ModuleType:
    """A module of space/ (``workers``, ``settings``), loaded from its file without putting space/ on sys.path."""
    spec = importlib.util.spec_from_file_location(f"space_{name}", SPACE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(command: list, cwd: Path, env: dict, log: Path, timeout: float = 300) -> tuple[subprocess.Popen, str]:
    """Start a Space (``command`` runs app.py) on a free local port, analytics off; wait until it answers."""
    port = free_port()
    env = {**env, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the Space exited with status {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url + "config", timeout=5):
                return process, url
        except OSError:
            time.sleep(0.5)
    stop(process)
    raise RuntimeError(f"the Space did not answer within {timeout} s:\n{log.read_text()[-4000:]}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
