"""Reading videos and frame folders: ordering, metadata probes and full-decode checks.

A probe returns {"num_frames", "fps", "height", "width"} or raises `UnusableInput` with a category
from FAILURE_CATEGORIES, so callers can record why an input cannot be used.
"""
import collections
import functools
import os
import re
import threading
from fractions import Fraction

import av
import imageio_ffmpeg
import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageOps

from latte_core.errors import UserError, first_line

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".flv",
                    ".wmv", ".3gp", ".gif")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# "unsupported": the file decodes, but not into frames the toolkit can show as a player would (a flip or a
# rotation by other than a multiple of 90 degrees in its display matrix, a sample aspect ratio, size or
# pixel format that changes mid-stream, a pixel format without an RGB conversion); "non-finite": the cache
# job's verdict on a video whose latents (or caption embedding) hold inf or NaN in the cache dtype
FAILURE_CATEGORIES = ("unreadable", "empty", "truncated", "corrupt frame", "too short", "timeout", "duplicate",
                      "missing", "unsupported", "bad name", "non-finite")
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


def read_manifest(manifest, clips=False):
    """The rows of an ingest manifest (`latte ingest`'s folder, or its manifest.parquet), sorted by
    video_id. A folder or file without one is a UserError naming it. With clips, a `latte curate` folder
    (its clips.parquet) is read too: one row per clip, its clip id as `video_id`, its video's id as
    `source_video_id`, and `start_frame`, `end_frame`, `crop_top`, `crop_left` (read_clip_frames
    applies them)."""
    manifest = os.fspath(manifest)
    if clips and os.path.isdir(manifest) and os.path.isfile(os.path.join(manifest, "curate.json")):
        return _read_clips(manifest)
    path = os.path.join(manifest, "manifest.parquet") if os.path.isdir(manifest) else manifest
    if not os.path.isfile(path):
        raise UserError(f"{manifest}: no manifest.parquet (run `latte ingest` first)")
    return sorted(pq.read_table(path).to_pylist(), key=lambda row: row["video_id"])


def _read_clips(folder):
    path = os.path.join(folder, "clips.parquet")
    if not os.path.isfile(path):
        raise UserError(f"{folder}: a curate folder without clips.parquet (its `latte curate` has not finished: "
                        f"run it again)")
    rows = [{**row, "video_id": row["clip_id"], "source_video_id": row["video_id"]}
            for row in pq.read_table(path).to_pylist()]
    for row in rows:
        del row["clip_id"]
    return sorted(rows, key=lambda row: (row["source_video_id"], row["start_frame"]))


def clip_picture(frame, row):
    """A frame of `row`'s video as its clip shows it: inside the letterbox bars a curate row crops
    (crop_top, crop_left, height, width); a manifest row's frame as it is."""
    if "start_frame" not in row:
        return frame
    top, left = row["crop_top"], row["crop_left"]
    return frame[top:top + row["height"], left:left + row["width"]]


def read_clip_frames(row, indices):
    """The frames at `indices` (ascending, counted from the clip's first frame) of a manifest row, as
    read_frames_at gives them (a curated clip's, also from a file decord refuses as truncated, as
    iter_frames_to_damage), cropped as the clip shows them: uint8 (len, H, W, 3)."""
    first = row.get("start_frame", 0)
    wanted = [first + int(i) for i in indices]
    try:
        frames = read_frames_at(row["path"], row["kind"], wanted)
    except UnusableInput as err:
        if "start_frame" not in row or not _refused_by_decord(err, row["kind"]):
            raise
        frames = read_frames_at(row["path"], row["kind"], wanted, pyav_only=True)  # as iter_frames_to_damage
    return np.stack([clip_picture(frame, row) for frame in frames])


def list_frame_files(folder):
    """The image files directly in `folder`, in frame order (by the numbers in their names)."""
    names = [entry.name for entry in os.scandir(folder)
             if not entry.is_dir() and entry.name.lower().endswith(IMAGE_EXTENSIONS)]
    return [os.path.join(folder, name) for name in sorted(names, key=natural_key)]


def probe_video(path, verify=False, check_keyframes=True):
    """Container metadata of a video file, at the size a player shows (square pixels, rotation applied),
    its keyframes' sizes and pixel formats checked against frame 0's (check_keyframes=False: not; for
    `latte bench ingest`, which times the check); with verify, decode every frame, check it and count
    what decodes."""
    if not os.path.isfile(path):
        raise UnusableInput("missing", f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise UnusableInput("unreadable", f"{path}: empty file (0 bytes)")
    if path.lower().endswith(".gif"):
        return _probe_gif(path, verify)
    video = _Video(path)
    info = {"num_frames": video.claimed, "fps": video.fps, "height": video.height, "width": video.width}
    if check_keyframes and not verify:  # --verify decodes, and so checks, every frame
        video.check_keyframes()
    if verify:
        decoded = video.count_decodable()
        if decoded < video.claimed:
            raise UnusableInput("truncated", f"{path}: only {decoded} of the {video.claimed} frames the "
                                             f"container declares decode")
        info["num_frames"] = decoded
    return info


# ------------------------------------------------------------------------------ video files: two decoders
# decord is the fast path, but it is not always right: decord 0.6.0 returns (48, 48, 4) arrays for a
# 48x48 yuv420p H.264 (and 4 or 6 "channels" at other widths), and how it treats rotation metadata is
# its own affair. PyAV (FFmpeg's libraries) is the reference: its frames, converted to RGB through FFmpeg's
# filter graph (_ToRGB) and turned by the display matrix, are what ffmpeg's own autorotating decode gives,
# exactly (interlaced and 10-bit video included). A file is decoded with decord only when decord's
# first frame has the displayed shape and agrees with PyAV's to within DECODERS_AGREE grey levels
# (measured: 0 on 8-bit H.264/MPEG-4/VP9 in yuv420p/yuvj420p/yuv444p, rotated or not; 10-bit 4:2:0,
# whose chroma the libraries' scalers interpolate differently, differs by up to 131 at sharp colour
# edges and is decoded with PyAV; so is a file of non-square pixels, whose frames decord leaves at the
# coded width, while a player shows them resampled to square pixels: see square_pixels); every later
# frame is checked again (shape, dtype), and a frame decord gets wrong or fails on hands the rest of
# the file to PyAV. A frame neither decoder gets right fails the file with UnusableInput naming it.
DECODERS_AGREE = 2
# A clip starting this many frames or more into a file PyAV decodes is reached by seeking (see _pyav_frames).
# Numbering a file's frames demuxes it once (kept per file): measured on a 720p 10-bit H.264, a packet
# demuxes in 1/67 of a frame's decode, so the first seek in a 3,000-frame file costs as much as decoding
# about 45 frames from the start, and later seeks nothing
SEEK_FROM = 48
_ROTATIONS = {(1, 0, 0, 1): 0, (0, -1, 1, 0): 1, (-1, 0, 0, -1): 2, (0, 1, -1, 0): 3}  # (a, b, c, d) -> quarter turns


def _open_decord(path):
    # kept here, not at the top: a process that loads decord before MindSpore aborts (std::random_device
    # could not be read: `python -c 'import decord; import mindspore'`), and this module is imported by
    # processes that load MindSpore later
    import decord
    try:
        return decord.VideoReader(path, num_threads=1)
    except Exception as err:  # decord raises its own DECORDError for anything it cannot open
        # decord reads every packet when it opens a file: a readable index whose data ends early
        # fails there, while a file with no index or garbage fails before.
        category = "truncated" if "av_read_frame failed" in str(err) else "unreadable"
        raise UnusableInput(category, f"{path}: cannot open as a video ({_first_line(err)})") from None


def _open_pyav(path):
    """(container, first video stream) with PyAV, decoding on one thread as decord does."""
    try:
        container = av.open(path)
    except Exception as err:
        raise UnusableInput("unreadable", f"{path}: cannot open as a video ({_first_line(err)})") from None
    if not container.streams.video:
        container.close()
        raise UnusableInput("unreadable", f"{path}: the file holds no video stream")
    # FFmpeg's own choice, as decord's and a player's: the video, not a cover picture stored before it
    stream = container.streams.best("video")
    stream.codec_context.thread_count = 1
    return container, stream


def quarter_turns(path, frame):
    """Counter-clockwise quarter turns (0-3) that the display matrix of a PyAV frame asks for; any other
    display transform (a flip, another angle, a scale or shear) is an "unsupported" UnusableInput."""
    side = frame.side_data.get("DISPLAYMATRIX")
    if side is None:
        return 0
    m = np.frombuffer(bytes(side), np.int32).astype(np.float64)
    if m.size != 9:
        raise UnusableInput("unsupported", f"{path}: a display matrix of {m.size} values, not 9")
    a, b, c, d = m[[0, 1, 3, 4]] / 65536.0  # 16.16 fixed point; m[6], m[7] (translation) do not matter
    key = tuple(int(round(v)) for v in (a, b, c, d))
    exact = np.allclose((a, b, c, d), key, atol=1e-4) and m[2] == 0 and m[5] == 0 and m[8] == 1 << 30
    if exact and key in _ROTATIONS:
        return _ROTATIONS[key]
    if a * d - b * c < 0:
        raise UnusableInput("unsupported", f"{path}: the display matrix mirrors the picture (a flip); only "
                                           f"rotations by 0/90/180/270 degrees are supported (re-encode it with "
                                           f"ffmpeg, which applies the flip)")
    angle = float(np.degrees(np.arctan2(c, a))) % 360
    if np.isclose(a * d - b * c, 1.0, atol=1e-3) and m[2] == 0 and m[5] == 0:
        raise UnusableInput("unsupported", f"{path}: display rotation of {angle:.4g} degrees; only 0/90/180/270 "
                                           f"are supported (re-encode it with ffmpeg, which applies the rotation)")
    raise UnusableInput("unsupported", f"{path}: the display matrix {[int(v) for v in m]} is not a rotation by a "
                                       f"multiple of 90 degrees (a scale, shear or perspective); re-encode it")


class _Video:
    """One video file: container metadata, the displayed size and the decoder that decodes it right. The probe's
    facts are kept per file version (_PROBED): a file opened again is not probed again."""

    def __init__(self, path, use_decord=True):
        self.path = path
        self._first = None  # decord's frame 0, when decord is the decoder
        key = (path, *_version(path), use_decord)
        known = _PROBED.get(key)
        if known is None:
            self._probe(use_decord)
            _PROBED.put(key, {name: getattr(self, name) for name in _PROBE_FACTS})
            return
        self.__dict__.update(known)
        if self.fast:
            self.reader = _open_decord(path)

    def _probe(self, use_decord):
        """Find the facts of _PROBE_FACTS: decord's count and rate, PyAV's frame 0, and whether decord's frame 0
        is the same picture (then decord decodes the file)."""
        path = self.path
        if not use_decord:  # PyAV alone, up to the frame count its container declares
            self._read_head()
            if self.declared == 0:
                raise UnusableInput("unreadable", f"{path}: the container declares no frame count for PyAV alone")
            self.fps, self.claimed, self.fast = self.rate, self.declared - self._dropped(), False
            return
        try:
            self.reader = _open_decord(path)  # first, so broken files keep decord's categories
        except UnusableInput as refused:
            if refused.category != "unreadable":
                raise
            self._pyav_alone(refused)
            return
        self.claimed = len(self.reader)
        if self.claimed == 0:
            raise UnusableInput("empty", f"{path}: the container holds no frames")
        self.fps = float(self.reader.get_avg_fps())
        self._read_head()
        if self.trimmed:  # decord counts and hands out the frames the edit list drops: PyAV decodes the file
            self.claimed -= self._dropped()
            first = None
        else:
            try:
                first = self.reader.next().asnumpy()
            except Exception:  # decord cannot decode it: PyAV decodes the file
                first = None
        if first is not None and self._right(first) and _max_difference(first, self.head) <= DECODERS_AGREE:
            self._first = first
        self.fast = self._first is not None

    def _pyav_alone(self, refused):
        """PyAV decodes a file decord cannot open at all: a codec or container decord's own FFmpeg lacks
        (decord 0.6.0: AV1 in any container), counting the frames from the container's declared
        count or, without one, its video packets (demuxed, not decoded: a packet is a frame in these
        formats). A file PyAV cannot decode either keeps decord's verdict."""
        try:
            self._read_head()
        except UnusableInput as err:
            if err.category == "unreadable":
                raise refused from None
            raise
        self.fps = self.rate
        packets, dropped = self._count_packets() if self.trimmed or not self.declared else (self.declared, 0)
        self.claimed, self.fast = packets - dropped, False
        if self.claimed <= 0:
            raise UnusableInput("empty", f"{self.path}: the container holds no frames")

    def _count_packets(self):
        """(video packets, those the edit list drops), demuxed, not decoded (once per file version)."""
        packets, dropped, _, error = _demuxed(self.path)
        if error is not None:
            raise UnusableInput("truncated", f"{self.path}: its packets cannot be read to the end ({error})")
        return packets, dropped

    def _dropped(self):
        """Frames the edit list drops before the first frame a player shows: an mp4 cut with `ffmpeg -ss
        ... -c copy` keeps the frames from the keyframe before the cut, flagged to be discarded; FFmpeg's
        decode (PyAV's) skips them, decord and the declared count do not."""
        return self._count_packets()[1] if self.trimmed else 0

    def _read_head(self):
        """Frame 0 through PyAV: the coded size, pixel format, sample aspect ratio, display matrix and the
        displayed frame."""
        container, stream = _open_pyav(self.path)
        try:
            try:
                frame, self.trimmed = _first_shown_frame(container, stream)
            except Exception as err:
                raise UnusableInput("unreadable", f"{self.path}: cannot decode the first frame "
                                                  f"({_first_line(err)})") from None
            if frame is None:
                raise UnusableInput("unreadable", f"{self.path}: no frame decodes")
            self.coded = (frame.height, frame.width)
            self.format = frame.format.name
            self.declared = stream.frames  # the container's count (0: unknown), PyAV's own decode's limit
            rate = stream.average_rate or stream.guessed_rate
            self.rate = float(rate) if rate else None
            self.turns = quarter_turns(self.path, frame)
            # the codec's ratio (from the stream's parameter sets), else the container's (an mp4 pasp box)
            self.codec_ratio = stream.codec_context.sample_aspect_ratio
            ratio = self.codec_ratio or stream.sample_aspect_ratio
            self.ratio = Fraction(ratio) if ratio else Fraction(1)
            self.stretched = (frame.height, display_width(frame.width, self.ratio))  # before the turn
            self.height, self.width = self.stretched[::-1] if self.turns % 2 else self.stretched
            self.head = self._pyav_rgb(frame, 0, _ToRGB(), stream)
        finally:
            container.close()

    def _right(self, frame):
        return frame.dtype == np.uint8 and frame.shape == (self.height, self.width, 3)

    def check(self, frame, index):
        if not self._right(frame):
            raise UnusableInput("corrupt frame", f"{self.path}: frame {index} decodes to a {frame.dtype} array of "
                                                 f"shape {tuple(frame.shape)}, not the ({self.height}, {self.width},"
                                                 f" 3) uint8 the video shows")
        return frame

    def _same_as_first(self, frame, index, stream):
        """`index`: the frame's number, or a str naming it (a keyframe by its time)."""
        where = index if isinstance(index, str) else f"frame {index}"
        if stream.codec_context.sample_aspect_ratio != self.codec_ratio:  # the decoder reads a new one
            # ahead of the frames it reorders, so `index` may be a frame or two before the change
            raise UnusableInput("unsupported", f"{self.path}: the sample aspect ratio changes mid-stream (from "
                                               f"{_ratio_text(self.ratio)} to "
                                               f"{_ratio_text(stream.codec_context.sample_aspect_ratio)} "
                                               f"about {where}): not supported, re-encode it with ffmpeg "
                                               f"-vf scale=iw*sar:ih,setsar=1")
        if (frame.height, frame.width) != self.coded:
            raise UnusableInput("unsupported", f"{self.path}: {where} is {frame.width}x{frame.height}, the "
                                               f"video starts at {self.coded[1]}x{self.coded[0]}: a size that "
                                               f"changes mid-stream is not supported")
        if frame.format.name != self.format:
            raise UnusableInput("unsupported", f"{self.path}: {where} is in pixel format {frame.format.name}, "
                                               f"the video starts in {self.format}: a pixel format that changes "
                                               f"mid-stream is not supported")

    def check_keyframes(self):
        """The coded size and pixel format of every keyframe against frame 0's, decoding the keyframes
        alone: the packets are read (demuxed, not decoded) and only those flagged as keyframes go to the
        decoder. A codec changes picture size or pixel format at a keyframe (H.264/HEVC: a new sequence
        parameter set takes effect at an IDR picture), so this finds such a change, which decord hides
        by rescaling the later frames to the first size, without decoding the other frames. (VP9 and
        AV1 may also rescale on inter frames; those are caught by --verify.) A keyframe that does not
        decode is left to --verify and to the decode that uses the file."""
        container, stream = _open_pyav(self.path)
        codec = stream.codec_context
        try:
            for packet in container.demux(stream):
                if packet.size and not packet.is_keyframe:  # the last, empty packet flushes the decoder
                    continue
                try:
                    frames = codec.decode(packet)
                except av.FFmpegError:
                    continue
                for frame in frames:
                    self._same_as_first(frame, f"the keyframe at {float(frame.time or 0):.3f} s", stream)
        finally:
            container.close()

    def _pyav_rgb(self, frame, index, to_rgb, stream):
        self._same_as_first(frame, index, stream)
        try:
            rgb = to_rgb(frame, stream)
        except Exception as err:
            raise UnusableInput("unsupported", f"{self.path}: frame {index}: pixel format {frame.format.name} "
                                               f"cannot be converted to RGB ({_first_line(err)})") from None
        if self.stretched != self.coded:
            rgb = square_pixels(rgb, self.stretched[1])
        if self.turns:
            rgb = np.ascontiguousarray(np.rot90(rgb, self.turns))
        return self.check(rgb, index)

    def count_decodable(self):
        """Decode every frame with PyAV, whichever decoder the file gets later (decord would hide a
        size change mid-stream: it rescales such frames to the first one's size), and check each: the
        coded size and pixel format of frame 0, whose RGB conversion (turned) was checked to be the
        displayed (H, W, 3) uint8, so the same conversion of every frame is too (converting them all
        would make --verify 1.5-3x slower than a plain decord decode, measured). The frames themselves
        are checked again as iter_frames / read_frames_at hand them out. Returns how many decode."""
        return sum(1 for _ in self._pyav_frames(0, self.claimed - 1, None, convert=False))

    def frames(self, wanted=None):
        """(index, uint8 (H, W, 3) frame as displayed) in order, of every frame or of the ascending
        indices `wanted`; decoder errors become UnusableInput naming the file."""
        wanted = None if wanted is None else sorted(set(int(i) for i in wanted))
        last = self.claimed - 1 if wanted is None else wanted[-1]
        if last >= self.claimed:
            raise UnusableInput("too short", f"{self.path}: frame {last} asked for, {self.claimed} frames")
        start = 0
        if self.fast:
            for index, frame in self._decord_frames(wanted):
                if frame is None:  # decord failed on this frame: PyAV goes on from here
                    start = index
                    break
                yield index, frame
            else:
                return
        yield from self._pyav_frames(start, last, wanted)

    def _decord_frames(self, wanted):
        """decord's frames while they are right, then (index, None) at the first that is not."""
        if wanted is not None:
            try:
                batch = self.reader.get_batch(wanted).asnumpy()
            except Exception:
                yield wanted[0], None
                return
            for position, index in enumerate(wanted):
                if len(batch) <= position or not self._right(batch[position]):
                    yield index, None
                    return
                yield index, batch[position]
            return
        first, self._first = self._first, None
        if first is None:  # frame 0 was handed out already: start again at the beginning
            self.reader.seek(0)
        for index in range(self.claimed):
            try:
                frame = first if index == 0 and first is not None else self.reader.next().asnumpy()
            except Exception:
                frame = None
            if frame is None or not self._right(frame):
                yield index, None
                return
            yield index, frame

    def _pyav_frames(self, start, last, wanted, convert=True):
        """(index, frame) with PyAV from `start` to `last` (of `wanted` only, if given). A first wanted frame
        SEEK_FROM or more frames in is reached by seeking to the keyframe before it, frames numbered by their
        timestamps. A seek that lands after that frame (MPEG-TS, which FFmpeg seeks by bytes, lands on the
        keyframe after the place it estimates) is tried again from SEEK_FROM, then 4x as many, ... frames
        earlier, down to frame 0; wherever the numbering fails, decoding starts again from frame 0 at the next
        frame due."""
        wanted = None if wanted is None else set(wanted)
        first = start if wanted is None else max(start, min(wanted))
        margin = 0
        while first >= SEEK_FROM:
            try:
                yield from self._pyav_decode(start, last, wanted, convert, seek_to=first, margin=margin)
                return
            except _SeekMissed as missed:
                start = missed.next_index
                if not missed.landed_late or margin == first:
                    break
            margin = min(first, max(SEEK_FROM, 4 * margin))
        yield from self._pyav_decode(start, last, wanted, convert)

    def _pyav_decode(self, start, last, wanted, convert, seek_to=None, margin=0):
        """_pyav_frames' decode: from frame 0, or from the keyframe before frame `seek_to` - `margin` (a seek
        must land at `seek_to` or before it)."""
        to_rgb = _ToRGB()
        container, stream = _open_pyav(self.path)
        index = 0
        try:
            if seek_to is not None:
                stamps = _frame_stamps(self.path)
                if stamps is None or len(stamps) <= last:
                    raise _SeekMissed(start)
                container.seek(int(stamps[seek_to - margin]), stream=stream, backward=True)  # the keyframe before
                index = None
            frames = container.decode(stream)
            while index is None or index <= last:
                try:
                    frame = next(frames)
                except StopIteration:
                    break
                except Exception as err:
                    if seek_to is not None:
                        raise _SeekMissed.at(start, index) from None
                    raise UnusableInput("truncated" if index else "unreadable",
                                        f"{self.path}: frame {index} of {self.claimed} fails to decode "
                                        f"({_first_line(err)})") from None
                if seek_to is not None:  # after the seek: each frame must be the one its timestamp numbers
                    number = _frame_number(stamps, frame.pts)
                    landed_after = index is None and (number is None or number > seek_to)
                    if landed_after or (index is not None and number != index):
                        raise _SeekMissed.at(start, index)
                    index = number
                if index >= start and (wanted is None or index in wanted):
                    if convert:
                        yield index, self._pyav_rgb(frame, index, to_rgb, stream)
                    else:
                        self._same_as_first(frame, index, stream)
                        yield index, None
                index += 1
        finally:
            container.close()
        if seek_to is not None and (index is None or index <= last):  # the seek's end may not be the file's
            raise _SeekMissed.at(start, index)
        if index <= last:
            asked = "" if wanted is None else f" (frame {last} asked for)"
            raise UnusableInput("truncated", f"{self.path}: only {index} of the {self.claimed} frames the "
                                             f"container declares decode{asked}")


class _SeekMissed(Exception):
    """Seeking could not number the frames: decode from frame 0, handing out frames from `next_index` on;
    `landed_late`: no frame was numbered (none handed out), so a seek to an earlier place may still do."""

    def __init__(self, next_index, landed_late=False):
        super().__init__(next_index)
        self.next_index, self.landed_late = next_index, landed_late

    @classmethod
    def at(cls, start, index):
        """The miss of a decode handing out frames from `start`, at frame `index` (None: before numbering one)."""
        return cls(start, landed_late=True) if index is None else cls(max(start, index))


# What a probe found that the frames depend on: a loader reads many clips of one file, and probing it again
# (PyAV's frame 0 decoded and converted, decord's frame 0 decoded and compared) was a third of a 720p clip's read
_PROBE_FACTS = ("claimed", "fps", "fast", "trimmed", "coded", "format", "declared", "rate", "turns", "codec_ratio",
                "ratio", "stretched", "height", "width")


class _KeptProbes:
    """The probes' facts of the files last opened, by file version (path, size, mtime): a changed file is
    probed again. Thread-safe, as the loader's threads share it; a failed probe is not kept."""

    def __init__(self, size):
        self.size, self.items, self.lock = size, collections.OrderedDict(), threading.Lock()

    def get(self, key):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
            return self.items.get(key)

    def put(self, key, facts):
        with self.lock:
            self.items[key] = facts
            if len(self.items) > self.size:
                self.items.popitem(last=False)


_PROBED = _KeptProbes(4096)  # ~1 kB each


def _version(path):
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def _frame_stamps(path):
    """The presentation timestamps of the frames a player shows, in order (int64; frame i's is [i]), or None
    when a packet has no timestamp or two share one (frames cannot be found by time)."""
    return _demuxed(path)[2]


def _demuxed(path):
    """What one demux of a file's video packets finds (see _demuxed_version): kept per file version, as a
    loader reads many clips of one file."""
    return _demuxed_version(path, *_version(path))


@functools.lru_cache(maxsize=256)  # 8 bytes a frame: 256 files of 10 minutes at 30 fps take 37 MB
def _demuxed_version(path, size, mtime_ns):
    """(packets, those the edit list drops, _frame_stamps' timestamps or None, the first line of a demux error
    or None), demuxed, not decoded."""
    container, stream = _open_pyav(path)
    packets = dropped = 0
    stamps, error = [], None
    try:
        for packet in container.demux(stream):
            if packet.size:
                packets += 1
                if packet.is_discard:
                    dropped += 1
                else:
                    stamps.append(packet.pts)
    except av.FFmpegError as err:
        error = _first_line(err)
    finally:
        container.close()
    if error is not None or any(stamp is None for stamp in stamps):
        return packets, dropped, None, error
    stamps = np.sort(np.array(stamps, np.int64))
    return packets, dropped, None if np.any(stamps[1:] == stamps[:-1]) else stamps, None


def _frame_number(stamps, stamp):
    """The number of the frame with this timestamp, or None."""
    if stamp is None:
        return None
    number = int(np.searchsorted(stamps, stamp))
    return number if number < len(stamps) and stamps[number] == stamp else None


def _first_shown_frame(container, stream):
    """(frame 0 as FFmpeg's decode shows it or None, whether the stream's first packet is one its edit list
    drops)."""
    trimmed = None
    for packet in container.demux(stream):
        if trimmed is None and packet.size:
            trimmed = packet.is_discard
        for frame in packet.decode():
            return frame, bool(trimmed)
    return None, bool(trimmed)


def display_width(coded_width, ratio):
    """The width a player shows for pixels of sample aspect ratio `ratio` (ffmpeg's scale=iw*sar:ih),
    rounded to the nearest even number (yuv420p encoders need even sizes): 176 at 128:117 -> 192."""
    return coded_width if ratio == 1 else max(2, 2 * round(coded_width * ratio / 2))


def square_pixels(rgb, width):
    """A uint8 (H, W, 3) frame of non-square pixels resampled to (H, width, 3), square pixels, with Pillow's
    bicubic filter (ffmpeg's default scaler is bicubic too)."""
    return np.asarray(Image.fromarray(rgb).resize((width, rgb.shape[0]), Image.BICUBIC))


def _ratio_text(ratio):
    ratio = Fraction(ratio) if ratio else Fraction(1)
    return f"{ratio.numerator}:{ratio.denominator}"


class _ToRGB:
    """Decoded frames to uint8 RGB arrays through FFmpeg's filter graph, as `ffmpeg -pix_fmt rgb24` converts
    them: its scaler is set up per frame from the frame's colour properties and is interlace-aware, which
    PyAV's VideoReformatter is not (measured against ffmpeg's output: interlaced H.264 up to 29-88 grey
    levels apart, 10-bit HEVC 37; through the graph 0, and faster). One per decode: the graph is built for
    the stream on its first frame."""

    def __init__(self):
        self._graph = None

    def __call__(self, frame, stream):
        if self._graph is None:
            graph = av.filter.Graph()
            source, convert = graph.add_buffer(template=stream), graph.add("format", "rgb24")
            sink = graph.add("buffersink")
            source.link_to(convert)
            convert.link_to(sink)
            graph.configure()
            self._graph = graph
        self._graph.push(frame)
        return self._graph.pull().to_ndarray()


def _max_difference(a, b):
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) if a.shape == b.shape else 256


def _probe_gif(path, verify):
    """GIFs are read with PIL: decord rejects many of them (no duration metadata)."""
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
    if not os.path.isdir(folder):
        raise UnusableInput("missing", f"{folder}: no such folder")
    files = list_frame_files(folder)
    if not files:
        raise UnusableInput("empty", f"{folder}: no jpg/png frames")
    try:
        with Image.open(files[0]) as image:
            width, height = _displayed_size(image)
    except Exception as err:
        raise UnusableInput("corrupt frame", f"{files[0]}: unreadable image ({_first_line(err)})") from None
    if verify:
        for path in files:
            try:
                with Image.open(path) as image:
                    image.load()
                    size = _displayed_size(image)
            except Exception as err:
                raise UnusableInput("corrupt frame", f"{path}: unreadable image ({_first_line(err)})") from None
            if size != (width, height):
                raise UnusableInput("corrupt frame", f"{path}: size {size} differs from the first frame's "
                                                     f"{(width, height)}")
    return {"num_frames": len(files), "fps": None, "height": height, "width": width}


def _first_line(err):
    """The first line of an error, without decord's "[hh:mm:ss] file.cc:123: " log prefix."""
    return _LOG_PREFIX.sub("", first_line(err, limit=None))[:200]


def iter_frames(path, kind, pyav_only=False):
    """Every frame of a video file or frame folder, in order, as uint8 (H, W, 3) as a player shows it
    (rotation applied); decoded sequentially one at a time, so memory does not depend on the video's
    length. Every frame is checked; a frame no decoder gets right, or any decoder error, raises
    UnusableInput naming the file. pyav_only: a video file through PyAV alone, for a file decord
    refuses to open (it reads every packet first: a truncated file), whose frames up to the damage
    PyAV still gives (then UnusableInput "truncated")."""
    if kind == "frames":
        files = list_frame_files(path)
        size = None
        for file in files:
            frame = _image_frame(file)
            size = size or frame.shape
            _check_image_frame(frame, size, file)
            yield frame
    elif path.lower().endswith(".gif"):
        yield from _gif_frames(path, None)
    else:
        video = _video(path, use_decord=not pyav_only)
        video.check_keyframes()  # a manifest older than ingest's check: decord would rescale a size change
        for _, frame in video.frames():
            yield frame


def read_frames_at(path, kind, indices, pyav_only=False):
    """The frames at `indices` (ascending) of a video file or frame folder: uint8 (len, H, W, 3), as
    iter_frames gives them (pyav_only: as there)."""
    indices = [int(i) for i in indices]
    if kind == "frames":
        files = list_frame_files(path)
        if indices and indices[-1] >= len(files):
            raise UnusableInput("too short", f"{path}: frame {indices[-1]} asked for, {len(files)} frames")
        frames = [_image_frame(files[index]) for index in indices]
        for index, frame in zip(indices, frames):
            _check_image_frame(frame, frames[0].shape, files[index])
        return np.stack(frames)
    if path.lower().endswith(".gif"):
        found = dict(_gif_frames(path, indices))
    else:
        found = dict(_video(path, use_decord=not pyav_only).frames(indices))
    return np.stack([found[index] for index in indices])


def _refused_by_decord(err, kind):
    """Whether an UnusableInput is decord refusing a video file it found truncated when opening it."""
    return kind == "video" and err.category == "truncated"


def iter_frames_to_damage(path, kind):
    """iter_frames; for a video decord refuses as truncated, PyAV's frames up to the damage (then its
    UnusableInput): a curated clip of a file damaged after ingest keeps its frames before the damage."""
    started = False
    try:
        for frame in iter_frames(path, kind):
            started = True
            yield frame
    except UnusableInput as err:
        if started or not _refused_by_decord(err, kind):
            raise
        yield from iter_frames(path, kind, pyav_only=True)


def _video(path, use_decord=True):
    if not os.path.isfile(path):
        raise UnusableInput("missing", f"{path}: no such file")
    return _Video(path, use_decord)


_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_GREY = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # Pillow's modes of a 16-bit greyscale PNG


def _displayed_size(image):
    """(width, height) of a frame image as a viewer shows it: turned by its EXIF orientation (a phone's
    JPEGs are stored sideways with a tag saying so), read without decoding the pixels."""
    turned = image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
    return image.size[::-1] if turned else image.size


def _image_frame(file):
    """uint8 (H, W, 3) of a frame image as a viewer shows it: turned by its EXIF orientation, and a 16-bit
    greyscale PNG scaled to 8 bits (Pillow's convert("RGB") clips its values at 255: a white frame)."""
    try:
        with Image.open(file) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in _SIXTEEN_BIT_GREY:
                grey = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
                return np.repeat(((grey + 128) // 257).astype(np.uint8)[..., None], 3, axis=2)
            return np.asarray(image.convert("RGB"))
    except Exception as err:
        raise UnusableInput("corrupt frame", f"{file}: unreadable image ({_first_line(err)})") from None


def _check_image_frame(frame, shape, file):
    if frame.dtype != np.uint8 or frame.shape != shape or frame.shape[2:] != (3,):
        raise UnusableInput("corrupt frame", f"{file}: a {frame.dtype} frame of shape {frame.shape}, the first "
                                             f"frame is {shape}")


def _gif_frames(path, indices):
    """(index, uint8 (H, W, 3)) of every frame of a GIF, or of the ascending `indices`."""
    try:
        with Image.open(path) as image:
            count = getattr(image, "n_frames", 1)
            width, height = image.size
            if indices and indices[-1] >= count:
                raise UnusableInput("too short", f"{path}: frame {indices[-1]} asked for, {count} frames")
            for index in range(count) if indices is None else indices:
                image.seek(index)
                frame = np.asarray(image.convert("RGB"))
                if frame.dtype != np.uint8 or frame.shape != (height, width, 3):
                    raise UnusableInput("corrupt frame", f"{path}: frame {index} decodes to shape {frame.shape}, "
                                                         f"not ({height}, {width}, 3)")
                yield index, frame
    except UnusableInput:
        raise
    except Exception as err:
        raise UnusableInput("unreadable", f"{path}: cannot decode the GIF ({_first_line(err)})") from None


def center_crop_resize(frame, size):
    """The official Latte rule: center-crop the largest square (on the short edge), then resize it
    to size x size with bilinear filtering. uint8 (H, W, 3) -> uint8 (size, size, 3)."""
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


def to_frames(pixels):
    """The inverse of to_pixels for any leading axes: float (..., 3, H, W) in [-1, 1] (a VAE's output,
    clipped) -> uint8 (..., H, W, 3), rounded to the nearest level."""
    pixels = np.asarray(pixels)
    return (np.clip((pixels + 1.0) * 127.5, 0, 255) + 0.5).astype(np.uint8).swapaxes(-3, -2).swapaxes(-2, -1)


# ------------------------------------------------------------------------------------------ writing
def write_mp4(path, frames, fps=8, faststart=False):
    """H.264 mp4 (yuv420p); with faststart the index (moov) precedes the data."""
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"{path}: H.264 in yuv420p needs even sizes, got {width}x{height}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    params = ["-loglevel", "error"] + (["-movflags", "+faststart"] if faststart else [])
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, codec="libx264",
                                         pix_fmt_out="yuv420p", macro_block_size=1, output_params=params)
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame).tobytes())
    writer.close()
    return path


def write_frame_folder(folder, frames, ext="jpg", names=None):
    """One image per frame, named f_0.jpg, f_1.jpg, ... unless `names` are given."""
    os.makedirs(folder, exist_ok=True)
    names = names or [f"f_{i}.{ext}" for i in range(len(frames))]
    for name, frame in zip(names, frames):
        Image.fromarray(frame).save(os.path.join(folder, name))
    return folder


def write_gif(path, frames, fps):
    """An animated GIF of uint8 (F, H, W, 3) frames, looping, at `fps`."""
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
