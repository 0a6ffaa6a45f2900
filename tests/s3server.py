"""A real S3 API server for the object-store tests, and a TCP proxy in front of it that a test can cut.

S3Server runs moto's server mode (`moto_server`, a Flask app speaking the S3 REST API) as a child process
on a free 127.0.0.1 port: the jobs talk to it through s3fs and botocore exactly as to a cloud store.
Proxy forwards a port to it; `cut()` drops every connection and refuses new ones until `restore()` (an
outage; `cut_after_puts=N` cuts as the N-th PUT arrives, before forwarding it: mid-upload at a point that
does not depend on timing; `put_delay` holds each PUT but the lock's heartbeat that long: a slow link
for the data, a run that stays live), and `strip_if_none_match` removes that header from requests (a server that
ignores conditional writes).
"""
import os
import socket
import subprocess
import sys
import threading
import time

BIN = os.path.dirname(sys.executable)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_listening(port, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _shut(*ends):
    for end in ends:
        try:
            end.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class S3Server:
    """moto_server on a free port; `env` are the variables a job needs to reach it (no real account)."""

    def __init__(self, log_folder, auth=False):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ}
        if auth:  # every request's access key is checked: a key the server never issued is refused (403)
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        self.log = open(os.path.join(log_folder, f"moto-{self.port}.log"), "w")
        self.process = subprocess.Popen([os.path.join(BIN, "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=self.log, stderr=subprocess.STDOUT, env=env)
        _wait_listening(self.port)

    def env(self, endpoint=None):
        return {"AWS_ENDPOINT_URL": endpoint or self.url, "AWS_ACCESS_KEY_ID": "testing-key",
                "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)
        self.log.close()


class Proxy:
    """127.0.0.1:<port> forwarded to `target_port`, one pair of threads per connection."""

    def __init__(self, target_port, strip_if_none_match=False, cut_after_puts=None, put_delay=0.0):
        self.target_port, self.strip, self.cut_after = target_port, strip_if_none_match, cut_after_puts
        self.put_delay = put_delay
        self.puts = 0
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.down = threading.Event()
        self.sockets = []
        self.lock = threading.Lock()
        self.stripped = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, server]
            threading.Thread(target=self._requests, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, source, sink):
        try:
            while True:
                data = source.recv(65536)
                if not data or self.down.is_set():
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _shut(source, sink)

    def _requests(self, source, sink):
        """Forward HTTP/1.1 requests one by one (with their If-None-Match header lines removed when
        stripping), counting the PUTs."""
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = source.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                lines = head.split(b"\r\n")
                kept = [line for line in lines if not (self.strip and line.lower().startswith(b"if-none-match:"))]
                if lines[0].startswith(b"PUT "):
                    with self.lock:
                        self.puts += 1
                        if self.cut_after is not None and self.puts == self.cut_after:
                            self.down.set()
                    if self.down.is_set():
                        self.cut()
                        return
                    if not lines[0].split(b" ")[1].split(b"?")[0].endswith(b"/.lock"):
                        time.sleep(self.put_delay)  # a slow link for the data; the lock's heartbeat keeps its pace
                self.stripped += len(lines) - len(kept)
                length = next((int(line.split(b":", 1)[1]) for line in kept
                               if line.lower().startswith(b"content-length:")), 0)
                sink.sendall(b"\r\n".join(kept) + b"\r\n\r\n")  # at once: a client may await 100-continue
                while length:
                    if not buffer:
                        buffer = source.recv(65536)
                        if not buffer:
                            return
                    part, buffer = buffer[:length], buffer[length:]
                    sink.sendall(part)
                    length -= len(part)
        except OSError:
            pass
        finally:
            _shut(source, sink)

    def cut(self):
        """An outage: every open connection dropped, new ones closed at once."""
        self.down.set()
        with self.lock:
            _shut(*self.sockets)
            self.sockets = []

    def restore(self):
        self.down.clear()

    def close(self):
        self.cut()
        self.listener.close()
