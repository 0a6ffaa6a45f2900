"""Media for tests: the package's procedural clips and frame folders, plus broken inputs and a small
random-weight VAE folder; and the checks bad-input tests share (one Error line, nothing changed)."""
import csv
import gc
import glob
import hashlib
import os
import signal
import subprocess
import time

import av

from latte_toolkit.datasets.video import write_frame_folder, write_mp4  # noqa: F401
from latte_toolkit.tools.synthetic import moving_square_frames  # noqa: F401


def write_captioned_clips(folder, captions, lengths, height=40, width=56):
    """clip_<i>.mp4 (lengths[i] frames) for each caption (None: no caption) and captions.csv listing them
    (the toy CSV format ingest reads); returns the list's path."""
    os.makedirs(folder, exist_ok=True)
    rows = []
    for i, (caption, length) in enumerate(zip(captions, lengths)):
        write_mp4(folder / f"clip_{i}.mp4", moving_square_frames(length, height=height, width=width, seed=i))
        rows.append({"video": f"clip_{i}.mp4", "caption": caption or ""})
    with open(folder / "captions.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["video", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return folder / "captions.csv"


def write_mp4_pyav(path, frames, sample_aspect_ratio=None, fps=8, container_format=None, codec="libx264",
                   pix_fmt="yuv420p", options=None):
    """H.264 (or `codec`, with its `options`) of uint8 (F, H, W, 3) frames through PyAV, its stream's pixels
    of the given sample aspect ratio (a Fraction) as broadcast and DV footage has them; the container from
    the file's name unless container_format names one ("h264" writes a raw Annex B stream, which can be
    concatenated with another; "mpegts" an MPEG transport stream)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps, options=options or {})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        if sample_aspect_ratio is not None:
            stream.codec_context.sample_aspect_ratio = sample_aspect_ratio
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def kill_after_ledger_lines(proc, ledger, lines, timeout=120):
    """SIGKILL the job `proc` once its ledger holds `lines` lines; returns whether it was still running
    then (a job that finished first cannot test a resume)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (ledger.exists() and len(ledger.read_text().splitlines()) >= lines):
        time.sleep(0.005)
    still_running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return still_running


def truncate(path, keep_fraction=0.5):
    data = open(path, "rb").read()
    with open(path, "wb") as handle:
        handle.write(data[: int(len(data) * keep_fraction)])
    return path


def write_vae_folder(folder, block_out_channels=(8, 8, 8, 8), groups=4, layers_per_block=1, seed=0):
    """A diffusers-format AutoencoderKL folder with random weights (8x downsampling by default)."""
    import mindspore as ms

    from latte_core import AutoencoderKL

    ms.set_seed(seed)
    config = {"block_out_channels": list(block_out_channels), "layers_per_block": layers_per_block,
              "norm_num_groups": groups, "latent_channels": 4}
    return AutoencoderKL.from_config(config).save_pretrained(folder)


def snapshot(folder):
    """{relative path: (sha256, mtime_ns)} of every file below `folder`: what "nothing changed" compares."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, folder)] = (hashlib.sha256(handle.read()).hexdigest(),
                                                       os.stat(path).st_mtime_ns)
    return found


def one_error_line(proc, code, *names):
    """The command exited with `code`, printed no traceback, and one `Error:` line naming `names`."""
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    for name in names:
        assert os.fspath(name) in errors[0], errors[0]
    return errors[0]


def unmount(folder, attempts=20):
    """umount a test's tmpfs. A mount still busy (a file a finished job's last thread or child process is
    closing) is tried again after a garbage collection, every 0.25 s for 5 s; then the error names what
    holds it (processes with a file, map or working folder under it), so a leak is seen, not hidden."""
    for _ in range(attempts):
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode == 0:
            return
        gc.collect()
        time.sleep(0.25)
    raise AssertionError(f"{folder} stays busy: {holders(folder)}")


def holders(folder):
    """{pid: [paths under `folder` it holds open, maps or works in]}."""
    root, found = os.fspath(folder), {}
    for proc in glob.glob("/proc/[0-9]*"):
        try:
            links = [os.readlink(fd) for fd in glob.glob(f"{proc}/fd/*")] + [os.readlink(f"{proc}/cwd")]
            with open(f"{proc}/maps") as maps:
                links += [line.split()[-1] for line in maps]
        except OSError:
            continue
        # the folder or below it: mount1 is not a prefix match of mount10
        held = sorted({link for link in links if link == root or link.startswith(root + os.sep)})
        if held:
            found[int(os.path.basename(proc))] = held
    return found
