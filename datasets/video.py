"""Reading videos and frame folders: ordering, metadata probes and full-decode checks.

A probe returns {"num_frames", "fps", "height", "width"} or raises `UnusableInput` with a category
from FAILURE_CATEGORIES, so callers can record why an input cannot be used.
"""
import os
import re

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".gif")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
FAILURE_CATEGORIES = ("unreadable", "empty", "truncated", "corrupt frame", "too short", "timeout", "duplicate",
                      "missing")
_NUMBER = re.compile(r"(\d+)")
_LOG_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: (Error: )?")


class UnusableInput(Exception):
    def __init__(self, category, message):
        super().__init__(message)
        if category not in FAILURE_CATEGORIES:
            raise ValueError(f"unknown failure category {category!r}")
        self.category = category
        self.message = message


def natural_key(name):
    """Sort key that orders embedded numbers by value: f_2.jpg before f_10.jpg."""
    return [int(part) if part.isdigit() else part.lower() for part in _NUMBER.split(name)]


def list_frame_files(folder):
    """The image files directly in `folder`, in frame order (by the numbers in their names)."""
    names = [entry.name for entry in os.scandir(folder)
             if not entry.is_dir() and entry.name.lower().endswith(IMAGE_EXTENSIONS)]
    return [os.path.join(folder, name) for name in sorted(names, key=natural_key)]


def probe_video(path, verify=False):
    """Container metadata of a video file; with verify, decode every frame and count what decodes."""
    import decord

    if not os.path.isfile(path):
        raise UnusableInput("missing", f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise UnusableInput("unreadable", f"{path}: empty file (0 bytes)")
    if path.lower().endswith(".gif"):
        return _probe_gif(path, verify)
    try:
        reader = decord.VideoReader(path, num_threads=1)
    except Exception as err:  # decord raises its own DECORDError for anything it cannot open
        # decord reads every packet when it opens a file: a readable index whose data ends early
        # fails there, while a file with no index or garbage fails before.
        category = "truncated" if "av_read_frame failed" in str(err) else "unreadable"
        raise UnusableInput(category, f"{path}: cannot open as a video ({_first_line(err)})") from None
    claimed = len(reader)
    if claimed == 0:
        raise UnusableInput("empty", f"{path}: the container holds no frames")
    try:
        first = reader.next().shape
    except Exception as err:
        raise UnusableInput("unreadable", f"{path}: cannot decode the first frame ({_first_line(err)})") from None
    info = {"num_frames": claimed, "fps": float(reader.get_avg_fps()), "height": int(first[0]), "width": int(first[1])}
    if verify:
        info["num_frames"] = _count_decodable(reader, claimed, path)
    return info


def _count_decodable(reader, claimed, path):
    """Continue decoding sequentially after the first frame (as the cache will); returns how many
    frames decode."""
    decoded = 1
    try:
        while decoded < claimed:
            reader.next()
            decoded += 1
    except StopIteration:
        pass
    except Exception as err:
        if decoded == 0:
            raise UnusableInput("unreadable", f"{path}: no frame decodes ({_first_line(err)})") from None
        raise UnusableInput("truncated", f"{path}: frame {decoded} of {claimed} fails to decode "
                                         f"({_first_line(err)})") from None
    if decoded < claimed:
        raise UnusableInput("truncated", f"{path}: only {decoded} of the {claimed} frames the container "
                                         f"declares decode")
    return decoded


def _probe_gif(path, verify):
    """GIFs are read with PIL: decord rejects many of them (no duration metadata)."""
    from PIL import Image

    try:
        image = Image.open(path)
    except Exception as err:
        raise UnusableInput("unreadable", f"{path}: unreadable GIF ({_first_line(err)})") from None
    with image:
        width, height = image.size
        count = getattr(image, "n_frames", 1)
        duration_ms = image.info.get("duration") or 0
        for index in range(count if verify else 0):
            try:
                image.seek(index)
                image.load()
            except Exception as err:
                raise UnusableInput("truncated" if index else "unreadable",
                                    f"{path}: frame {index} of {count} fails to decode ({_first_line(err)})") from None
    return {"num_frames": count, "fps": 1000.0 / duration_ms if duration_ms else None, "height": height,
            "width": width}


def probe_frame_folder(folder, verify=False):
    """Frame count and size of a folder of images; with verify, decode every image."""
    from PIL import Image

    if not os.path.isdir(folder):
        raise UnusableInput("missing", f"{folder}: no such folder")
    files = list_frame_files(folder)
    if not files:
        raise UnusableInput("empty", f"{folder}: no jpg/png frames")
    try:
        with Image.open(files[0]) as image:
            width, height = image.size
    except Exception as err:
        raise UnusableInput("corrupt frame", f"{files[0]}: unreadable image ({_first_line(err)})") from None
    if verify:
        for path in files:
            try:
                with Image.open(path) as image:
                    image.load()
                    size = image.size
            except Exception as err:
                raise UnusableInput("corrupt frame", f"{path}: unreadable image ({_first_line(err)})") from None
            if size != (width, height):
                raise UnusableInput("corrupt frame", f"{path}: size {size} differs from the first frame's "
                                                     f"{(width, height)}")
    return {"num_frames": len(files), "fps": None, "height": height, "width": width}


def _first_line(err):
    """The first line of an error, without decord's "[hh:mm:ss] file.cc:123: " log prefix."""
    text = str(err).strip().splitlines()
    return _LOG_PREFIX.sub("", text[0])[:200] if text else type(err).__name__


def iter_frames(path, kind):
    """Every frame of a video file or frame folder, in order, as uint8 (H, W, 3); decoded
    sequentially one at a time, so memory does not depend on the video's length."""
    from PIL import Image

    if kind == "frames":
        for file in list_frame_files(path):
            with Image.open(file) as image:
                yield np.asarray(image.convert("RGB"))
    elif path.lower().endswith(".gif"):
        with Image.open(path) as image:
            for index in range(getattr(image, "n_frames", 1)):
                image.seek(index)
                yield np.asarray(image.convert("RGB"))
    else:
        import decord
        reader = decord.VideoReader(path, num_threads=1)
        for _ in range(len(reader)):
            yield reader.next().asnumpy()


def read_frames_at(path, kind, indices):
    """The frames at `indices` (ascending) of a video file or frame folder: uint8 (len, H, W, 3)."""
    from PIL import Image

    indices = [int(i) for i in indices]
    if kind == "frames":
        files = list_frame_files(path)
        if indices and indices[-1] >= len(files):
            raise UnusableInput("too short", f"{path}: frame {indices[-1]} asked for, {len(files)} frames")
        frames = []
        for index in indices:
            with Image.open(files[index]) as image:
                frames.append(np.asarray(image.convert("RGB")))
        return np.stack(frames)
    if path.lower().endswith(".gif"):
        frames = []
        with Image.open(path) as image:
            for index in indices:
                image.seek(index)
                frames.append(np.asarray(image.convert("RGB")))
        return np.stack(frames)
    import decord
    reader = decord.VideoReader(path, num_threads=1)
    if indices and indices[-1] >= len(reader):
        raise UnusableInput("too short", f"{path}: frame {indices[-1]} asked for, {len(reader)} frames")
    return reader.get_batch(indices).asnumpy()


def center_crop_resize(frame, size):
    """The official Latte rule: center-crop the largest square (on the short edge), then resize it
    to size x size with bilinear filtering. uint8 (H, W, 3) -> uint8 (size, size, 3)."""
    from PIL import Image

    height, width = frame.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = frame[top:top + side, left:left + side]
    if side == size:
        return np.ascontiguousarray(square)
    return np.asarray(Image.fromarray(square).resize((size, size), Image.BILINEAR))


def to_pixels(frames):
    """uint8 frames (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1], the VAE's input."""
    return (np.stack(frames).astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2)
