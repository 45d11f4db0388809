"""Real servers on 127.0.0.1 for remote-set benchmarks and tests, counting the bytes they send per client
process (the client's RANK, read through /proc):
- `http_server`: an HTTP file server with single byte ranges, ETag and Last-Modified, and misbehaviour on
  demand (HTTP 500, stalls, HTML pages, corrupt or cut bytes, slow sends);
- `s3_server`: moto's S3-compatible server (needs moto), its WSGI app wrapped by the counter.

    base, stop = http_server(Path("site"), ledger := Ledger())
    ...                                   # http://127.0.0.1:PORT/<path under site>
    stop()
"""

from __future__ import annotations

import http.server
import os
import re
import threading
import time
from collections import defaultdict
from pathlib import Path


# -- who is asking ------------------------------------------------------------------------------------

def _socket_inode(port: int) -> str | None:
    """Inode of the live TCP socket whose local port is `port` (the client end of a connection to our
    server); entries of closed connections (inode 0, e.g. TIME_WAIT of an earlier use of the port) are skipped."""
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[1].endswith(want) and parts[9] != "0":
                return parts[9]
    return None


def client_rank(port: int) -> str:
    """'0', '1', ... (the RANK torchrun gave the client process), 'main' (a process without RANK), or '?'.
    Clients are this process or its descendants (torchrun's ranks, their curl children): only those are
    searched for the socket."""
    import psutil

    inode = _socket_inode(port)
    if inode is None:
        return "?"
    target = f"socket:[{inode}]"
    candidates, queue = [], [psutil.Process()]
    while queue:  # this process and its descendants (one that exits meanwhile is skipped, not fatal)
        proc = queue.pop()
        candidates.append(proc)
        try:
            queue.extend(proc.children())
        except psutil.Error:
            pass
    for proc in candidates:
        pid = proc.pid
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                    ranks = [e[5:].decode() for e in env if e.startswith(b"RANK=")]
                    return ranks[0] if ranks else "main"
            except OSError:
                continue
    return "?"


class Ledger:
    """Bytes and requests served, per (rank, path). A connection's rank is looked up when it opens, while
    its client is surely alive (a `curl` child may be gone by the time its bytes are counted)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.bytes: dict[tuple[str, str], int] = defaultdict(int)
        self.gets: dict[str, int] = defaultdict(int)

    def add(self, rank: str, path: str, n: int) -> None:
        with self.lock:
            self.bytes[(rank, path)] += n

    def count(self, path: str) -> None:
        with self.lock:
            self.gets[path] += 1

    def tar_bytes_by_rank(self, prefix: str) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for (rank, path), n in self.bytes.items():
            if path.startswith(prefix) and path.endswith(".tar"):
                out[rank] += n
        return dict(out)

    def tars_by_rank(self, prefix: str) -> dict[str, set]:
        out: dict[str, set] = defaultdict(set)
        for (rank, path), n in self.bytes.items():
            if path.startswith(prefix) and path.endswith(".tar") and n:
                out[rank].add(path)
        return dict(out)

    def tar_gets(self, prefix: str = "/") -> int:
        return sum(n for p, n in self.gets.items() if p.startswith(prefix) and p.endswith(".tar"))


# -- HTTP -------------------------------------------------------------------------------------------

class Behaviour:
    """What the HTTP server does to some paths (exact path -> mode): "500", "stall", "html", "corrupt",
    "truncate", "slow" (4 KiB per 50 ms)."""

    def __init__(self):
        self.modes: dict[str, str] = {}


class _FileHandler(http.server.BaseHTTPRequestHandler):
    """Serves the files under `server.root` (single byte ranges), counting into `server.ledger` and
    misbehaving as `server.behaviour` says."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        self.rank = client_rank(self.client_address[1])

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def _serve(self, head: bool):
        path = self.path.split("?", 1)[0]
        mode = self.server.behaviour.modes.get(path)
        if not head:
            self.server.ledger.count(path)
        if mode == "500":
            return self._reply(500, b"internal error", "text/plain", head)
        if mode == "html":
            return self._reply(200, b"<!DOCTYPE html><html><body>Sign in to continue</body></html>\n", "text/html", head)
        root = self.server.root.resolve()
        file = (root / path.lstrip("/")).resolve()
        if root not in file.parents or not file.is_file():
            return self._reply(404, b"not found", "text/plain", head)
        data = file.read_bytes()
        if mode == "corrupt":
            data = data[:600] + bytes([data[600] ^ 0xFF]) + data[601:]
        elif mode == "truncate":
            data = data[: len(data) // 2]
        start, end, status = 0, len(data), 200
        m = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))
        if m:
            start = int(m.group(1))
            end = min(len(data), int(m.group(2)) + 1) if m.group(2) else len(data)
            status = 206
        self._headers(status, file, len(data), start, end)
        if not head:
            self._send(path, data[start:end], mode)

    def _headers(self, status: int, file: Path, size: int, start: int, end: int) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/x-tar")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", self.date_time_string(int(file.stat().st_mtime)))
        self.send_header("ETag", f'"{file.stat().st_mtime_ns:x}-{size:x}"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()

    def _send(self, path: str, body: bytes, mode: str | None) -> None:
        if mode == "stall":
            self.wfile.write(body[:100])
            self.wfile.flush()
            time.sleep(600)
            return
        step = 4096 if mode == "slow" else len(body) or 1
        for i in range(0, len(body), step):
            try:
                self.wfile.write(body[i:i + step])
                if mode == "slow":
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                return
            self.server.ledger.add(self.rank, path, len(body[i:i + step]))

    def _reply(self, status, body, ctype, head):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


def http_server(root: Path, ledger: Ledger | None = None, behaviour: Behaviour | None = None):
    """(base URL, stop()) of a threaded HTTP server for the files under `root`, with single byte ranges."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FileHandler)
    server.root, server.ledger, server.behaviour = Path(root), ledger or Ledger(), behaviour or Behaviour()
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()

    return f"http://127.0.0.1:{server.server_address[1]}", stop


# -- S3 (moto) ----------------------------------------------------------------------------------------

def s3_server(ledger: Ledger):
    """(endpoint URL, stop()) of moto's S3-compatible server, its WSGI app wrapped to count bytes per client."""
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    class Counting:
        def __init__(self, app):
            self.app = app

        def __call__(self, environ, start_response):
            port = int(environ.get("REMOTE_PORT") or 0)
            path = environ.get("PATH_INFO", "")
            get = environ.get("REQUEST_METHOD") == "GET"
            rank = client_rank(port) if get and port else "?"
            if get:
                ledger.count(path)
            for chunk in self.app(environ, start_response):
                if get:
                    ledger.add(rank, path, len(chunk))
                yield chunk

    class Server(ThreadedMotoServer):
        def _server_entry(self):
            app = Counting(DomainDispatcherApplication(create_backend_app))
            self._server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler)
            self._server_ready_event.set()
            self._server.serve_forever()

    server = Server(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()

    def stop():
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()

    return f"http://{host}:{port}", stop


def s3_env(endpoint: str) -> dict:
    return {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint}


def upload_tree(endpoint: str, root: Path, bucket: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                      region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    for f in sorted(root.rglob("*")):
        if f.is_file():
            s3.upload_file(str(f), bucket, str(f.relative_to(root)))
