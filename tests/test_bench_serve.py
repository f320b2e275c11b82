"""tools/bench_serve.py's client against a local HTTP/1.1 server that counts connections: with
keep-alive each client thread uses one connection for all its requests, without it one per request,
and a connection the server closes is replaced without losing the request."""
import http.server
import importlib.util
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_bench_serve():
    spec = importlib.util.spec_from_file_location("bench_serve", ROOT / "tools" / "bench_serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CountingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, close_every=0):
        self.connections, self.bodies, self.close_every = 0, [], close_every
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), Handler)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            self.server.bodies.append(body)
            n = len(self.server.bodies)
        reply = b'{"ok": true}'
        self.send_response(200 if body else 400)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)
        # Closed by the server without telling the client (no "Connection: close"), as an idle
        # timeout does: the client's next request on it fails and must be sent again.
        if self.server.close_every and n % self.server.close_every == 0:
            self.wfile.flush()
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server(request):
    srv = CountingServer(getattr(request, "param", 0))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("keep_alive", [True, False])
def test_connections_per_request(server, keep_alive):
    bench = load_bench_serve()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    result = bench.run_level(url, b"image", concurrency=4, requests=40, timeout=10, keep_alive=keep_alive)
    assert result["requests"] == 40 and result["non_200"] == 0 and result["keep_alive"] is keep_alive
    assert server.bodies == [b"image"] * 40
    # One connection per client thread (4) or one per request (40).
    assert server.connections == (4 if keep_alive else 40)


def test_non_200_answers_are_counted(server):
    bench = load_bench_serve()
    result = bench.run_level(f"http://127.0.0.1:{server.server_address[1]}/", b"", concurrency=2, requests=6,
                             timeout=10)
    assert result["non_200"] == 6


@pytest.mark.parametrize("server", [3], indirect=True)
def test_a_connection_closed_by_the_server_is_replaced(server):
    bench = load_bench_serve()
    client = bench.KeepAliveClient(f"http://127.0.0.1:{server.server_address[1]}/", timeout=10)
    statuses = [client.post(b"image") for _ in range(10)]
    assert statuses == [200] * 10
    assert len(server.bodies) == 10  # every request reached the server once
    assert server.connections == 4  # a new one after each third request
