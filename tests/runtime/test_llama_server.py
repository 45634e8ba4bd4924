"""End to end in a real llama-server: a ropepatch'd GGUF serves past its original context.

``llama-server`` is built from the llama.cpp sources in the installed llama-cpp-python's sdist
by ``tools/build_llama_server.py`` (the README's test command runs it first); a missing
binary FAILS this module with one line naming that command -- never a skip.

We patch a copy of ``fixtures/tiny-llama-f32.gguf`` (training context 128) to 1024 tokens
(``patch_gguf``, NTK) and start one server per file on 127.0.0.1 (a free port), with no
``-c``: llama-server's ``n_ctx`` defaults to 0, which llama.cpp reads as "the context the
model was trained with", i.e. the file's ``llama.context_length`` (``llama_context``:
``n_ctx = params.n_ctx == 0 ? hparams.n_ctx_train : params.n_ctx``, then padded up to a
multiple of 256, so the original's KV cache has 256 cells). The server's default ``-np -1``
means 4 slots sharing one unified KV cache, and the server's ``n_ctx_slot()`` caps every slot
at ``min(n_ctx_seq, n_ctx_train)`` (vendored llama.cpp of llama-cpp-python 0.3.36): so the per-slot
context that ``/props`` (``default_generation_settings.n_ctx``) and ``/slots`` report is the
file's own training context, 128 for the original and 1024 for the patched file.

A ``/completion`` whose prompt is longer than 128 tokens (the fixture's vocabulary is one
token per byte: ``/tokenize`` checks it) is then refused by the original -- HTTP 400,
``exceed_context_size_error``, "request (N tokens) exceeds the available context size (128
tokens), try increasing it" -- and served by the patched file. Each server is stopped by its
pid (SIGTERM, then SIGKILL after a timeout) however the test ends.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT

FIXTURE = "tiny-llama-f32.gguf"
TRAIN_CTX, PATCHED_CTX = 128, 1024
PROMPT = "The quick brown fox jumps over the lazy dog. " * 5  # 225 bytes -> ~225 tokens
N_PREDICT = 4
START_TIMEOUT_S, STOP_TIMEOUT_S, REQUEST_TIMEOUT_S = 60, 10, 60
BUILD_COMMAND = ".venv/bin/python tools/build_llama_server.py"


def _build_tool():
    spec = importlib.util.spec_from_file_location("build_llama_server", ROOT / "tools" / "build_llama_server.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def server_binary() -> str:
    """The llama-server built for the installed llama-cpp-python; fails (one line) if absent."""
    tool = _build_tool()
    version = tool.installed_version()
    if version is None:
        pytest.fail("llama-cpp-python is not installed (its version picks the llama-server build); "
                    "install it: pip install -e '.[test]'", pytrace=False)
    path = tool.server_path(version)
    if not os.access(path, os.X_OK):
        pytest.fail(f"llama-server for llama-cpp-python {version} is not built ({os.path.relpath(path, ROOT)} "
                    f"is missing); build it: {BUILD_COMMAND}", pytrace=False)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One llama-server process on 127.0.0.1:port serving ``model``; talks plain HTTP/JSON."""

    def __init__(self, binary: str, model: str, log: Path):
        self.model, self.log_path = model, log
        self.port = free_port()
        self._log = open(log, "wb")
        # no -c: the server sizes the context from the file's training context
        self.proc = subprocess.Popen(
            [binary, "-m", model, "--host", "127.0.0.1", "--port", str(self.port), "-t", "2", "--no-warmup"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)

    def request(self, method: str, path: str, body: dict | None = None,
                timeout: float = REQUEST_TIMEOUT_S) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"null")
        finally:
            conn.close()

    def log_tail(self, n: int = 15) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def wait_ready(self) -> bool:
        """True once /health says 200; False if the port was taken meanwhile (start another)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if "couldn't bind HTTP server socket" in self.log_tail():
                return False  # another process took the free port between our probe and its bind
            if self.proc.poll() is not None:
                pytest.fail(f"llama-server exited with {self.proc.returncode} while starting on {self.model}:\n"
                            f"{self.log_tail()}", pytrace=False)
            try:
                status, _ = self.request("GET", "/health", timeout=1)
                if status == 200:
                    return True
            except (OSError, http.client.HTTPException, ValueError):
                pass  # not listening yet, or still loading the model (503)
            time.sleep(0.05)
        pytest.fail(f"llama-server not healthy after {START_TIMEOUT_S} s on {self.model}:\n{self.log_tail()}",
                    pytrace=False)

    def stop(self) -> int:
        """SIGTERM the server's pid, wait; SIGKILL it if it does not exit in time."""
        try:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    os.kill(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
            return self.proc.returncode
        finally:
            self._log.close()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """The original fixture and a copy patched to 1024 tokens (ropepatch gguf --ctx 1024 -o)."""
    from ropepatch.patch.gguf import patch_gguf

    d = tmp_path_factory.mktemp("llama-server")
    patched = str(d / "tiny-llama-1k.gguf")
    patch_gguf(str(FIXTURES / FIXTURE), PATCHED_CTX, out=patched)
    return {"original": str(FIXTURES / FIXTURE), "patched": patched}


@pytest.fixture(scope="module", params=[("original", TRAIN_CTX), ("patched", PATCHED_CTX)], ids=lambda p: p[0])
def server(request, models, tmp_path_factory):
    """A running llama-server on one of the two files, and the per-slot context it must have."""
    name, expected_ctx = request.param
    binary = server_binary()
    log_dir = tmp_path_factory.mktemp(f"log-{name}")
    for attempt in range(3):
        srv = Server(binary, models[name], log_dir / f"llama-server-{attempt}.log")
        try:
            ready = srv.wait_ready()
        except BaseException:
            srv.stop()
            raise
        if ready:
            break
        srv.stop()
    else:
        pytest.fail(f"llama-server could not bind a free port in 3 tries:\n{srv.log_tail()}", pytrace=False)
    try:
        yield srv, expected_ctx
    finally:
        rc = srv.stop()
    assert rc == 0, f"llama-server (pid {srv.proc.pid}) exited with {rc} on SIGTERM:\n{srv.log_tail()}"


def test_slot_context_is_the_files_training_context(server):
    srv, expected = server
    status, props = srv.request("GET", "/props")
    assert status == 200, props
    assert props["default_generation_settings"]["n_ctx"] == expected, props["default_generation_settings"]
    assert props["model_path"] == srv.model
    status, slots = srv.request("GET", "/slots")
    assert status == 200, slots
    assert slots and [s["n_ctx"] for s in slots] == [expected] * len(slots), slots
    status, models = srv.request("GET", "/v1/models")
    assert status == 200, models
    meta = models["data"][0]["meta"]
    assert (meta["n_ctx"], meta["n_ctx_train"]) == (expected, expected), meta


def test_prompt_longer_than_128_tokens(server):
    srv, expected = server
    status, tok = srv.request("POST", "/tokenize", {"content": PROMPT, "add_special": True})
    assert status == 200, tok
    n_prompt = len(tok["tokens"])
    assert TRAIN_CTX < n_prompt < PATCHED_CTX - N_PREDICT, n_prompt  # byte tokens (+ BOS)

    status, body = srv.request("POST", "/completion", {"prompt": PROMPT, "n_predict": N_PREDICT,
                                                       "temperature": 0, "ignore_eos": True,
                                                       "cache_prompt": False})
    if expected == TRAIN_CTX:
        assert status == 400, body
        err = body["error"]
        assert err["type"] == "exceed_context_size_error", err
        assert "exceeds the available context size (128 tokens)" in err["message"], err
        assert (err["n_prompt_tokens"], err["n_ctx"]) == (n_prompt, TRAIN_CTX), err
    else:
        assert status == 200, body
        assert body["tokens_evaluated"] == n_prompt, body
        assert body["tokens_predicted"] == N_PREDICT, body
        assert body["truncated"] is False, body
