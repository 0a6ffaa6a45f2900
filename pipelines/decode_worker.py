"""Probing inputs in a child process that can be killed when a decode hangs.

A probe decodes with decord and PyAV (datasets.video: PyAV reads the display matrix and checks decord's
frames). decord can hang on a bad container (e.g. one that over-reports its frame count), and a hung C call
cannot be interrupted from Python. `DecodeWorker` keeps one child process (`python -m
pipelines.decode_worker`) that answers one JSON request per line; a request that gets no answer
within the timeout kills the child, is reported as a "timeout" failure, and the next request starts a
fresh child. A plain subprocess (not multiprocessing) is used so this also works inside daemonic
dask worker processes.
"""
import json
import os
import select
import subprocess
import sys
import time

from latte_toolkit.datasets.video import UnusableInput, probe_frame_folder, probe_video


class DecodeWorker:
    def __init__(self, timeout=60.0):
        self.timeout = timeout
        self.process = None

    def start(self):
        """Start the child now (it returns at once; the child imports decord in the background)."""
        if self.process is None or self.process.poll() is not None:
            self._spawn()

    def _spawn(self):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # decord/FFmpeg print their errors to stderr; the reason of each failure is recorded instead.
        self.process = subprocess.Popen([sys.executable, "-m", "latte_toolkit.pipelines.decode_worker"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)

    def probe(self, kind, path, verify):
        """{"ok": True, num_frames, fps, height, width} or {"ok": False, "category", "message"}."""
        self.start()
        self.process.stdin.write(json.dumps({"kind": kind, "path": path, "verify": verify}) + "\n")
        self.process.stdin.flush()
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self.process.stdout], [], [], max(remaining, 0))
            if ready:
                line = self.process.stdout.readline()
                if line:
                    return json.loads(line)
                code = self.process.wait()  # the child died (e.g. a decoder crash) while on this input
                self.process = None
                return {"ok": False, "category": "unreadable",
                        "message": f"{path}: the decoder process died (exit code {code})"}
            if remaining <= 0:
                self.close()
                return {"ok": False, "category": "timeout",
                        "message": f"{path}: decoding took longer than {self.timeout:g} s and was killed"}

    def close(self):
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def serve(stdin=sys.stdin, stdout=sys.stdout):
    """Child side: one JSON request per line in, one JSON answer per line out."""
    # both decoders loaded before the first request arrives; decord here, not at the top: a process that
    # loads it before MindSpore aborts (std::random_device), and the parent (ingest) may load MindSpore later
    import decord  # noqa: F401
    for line in stdin:
        request = json.loads(line)
        probe = probe_frame_folder if request["kind"] == "frames" else probe_video
        try:
            answer = {"ok": True, **probe(request["path"], request["verify"])}
        except UnusableInput as err:
            answer = {"ok": False, "category": err.category, "message": err.message}
        except Exception as err:  # an unexpected decoder error fails this input, not the job
            answer = {"ok": False, "category": "unreadable", "message": f"{request['path']}: {err!r}"[:500]}
        stdout.write(json.dumps(answer) + "\n")
        stdout.flush()


if __name__ == "__main__":
    serve()
