"""Scene cuts of one video, fed its frames in order (pipelines/curate.py decodes each video once).

- Hard cuts: PySceneDetect's ContentDetector (the mean HSV change between consecutive frames, 0-255,
  against `cut_threshold`), on the frames at DETECT_SIZE (a quarter of the analysis size: 1/16 of its
  cost, and a hard cut changes the whole picture); the checks below score the analysis frames.
- Motion: a detected cut at frame k whose frame k-1, moved onto frame k by their optical flow (OpenCV's
  DIS), scores at most MOTION_SHARE of its plain score against it is fast motion, not a cut (measured
  on 128 px clips: textures panning 4-8 px/frame 0.16-0.29, cuts between skies of one colour with
  other clouds 0.78-0.95).
- Brief flashes: a detected cut at frame k whose frame k-1 matches one of the next `flash_frames` frames
  is an excursion that returns (a flash, a flicker), not a cut: it and any cut inside it are dropped.
- Dissolves: PySceneDetect has no detector for them (its TransNetV2 needs weights), so frames are checked
  for a linear blend over DISSOLVE_HALF frames each side. With g the frame divided by its mean brightness
  (so a fade, which only scales it, does not count), a frame i is inside a dissolve when the change
  d = mean|g[i+h] - g[i-h]| is at least `dissolve_threshold` and the frame lies on the straight line between
  them, mean|g[i] - (g[i-h] + g[i+h]) / 2| <= LINEARITY x d (a hard cut, the middle frame on one side, and
  a flash are at 0.5), and the change is not motion: g[i-h] moved onto g[i+h] by their optical flow still
  differs by UNEXPLAINED x d or more (a slow pan over smooth texture is near-linear too, but its flow
  explains it). A run of such frames drops [first - h, last + h], which covers a linear dissolve of 2h
  frames or more.

A scene boundary is (first, end): frames [first, end) belong to no scene (empty for a hard cut at first).
"""
import collections

import cv2
import numpy as np
from scenedetect import FrameTimecode, StatsManager
from scenedetect.detectors import ContentDetector

ANALYSIS_SIZE = 128  # short side of the frames every curation measure sees (cuts here, motion, hashes)
DETECT_SIZE = 32  # short side of the frames the cut detector, the dissolve check and the hashes see
DISSOLVE_HALF = 4  # h: frames each side of the middle one; dissolves of 2h = 8 frames and longer are found
LINEARITY = 0.25
UNEXPLAINED = 0.5
MOTION_SHARE = 0.5
DARK = 8.0  # mean brightness below which a frame is not normalised further (a fade to black)


def analysis_frame(frame, short_side=ANALYSIS_SIZE):
    """uint8 (H, W, 3) -> uint8 RGB with its short side `short_side`: averaged down by the largest whole
    factor first (OpenCV's area filter has a fast path for those: 0.27 ms against 0.9 ms for 640x360 in
    one step, measured), the rest bilinear."""
    height, width = frame.shape[:2]
    factor = min(height, width) // short_side
    if factor >= 2:
        frame = cv2.resize(frame, (width // factor, height // factor), interpolation=cv2.INTER_AREA)
        height, width = frame.shape[:2]
    scale = short_side / min(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return frame if size == (width, height) else cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)


class Compensator:
    """Moves one frame onto another by their optical flow (OpenCV's DIS, ultrafast preset)."""

    def __init__(self):
        self.flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)

    def warp(self, before, after, moved=None):
        """`moved` (default: `before`, a frame of the same size) resampled along the flow from uint8 RGB
        `after` back to `before`, so it lines up with `after`."""
        flow = self.flow.calc(cv2.cvtColor(after, cv2.COLOR_RGB2GRAY), cv2.cvtColor(before, cv2.COLOR_RGB2GRAY), None)
        ys, xs = np.indices(flow.shape[:2], dtype=np.float32)
        return cv2.remap(before if moved is None else moved, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)


class SceneCuts:
    """Feed `add(small, tiny)` the analysis frames of one video in order (and each at DETECT_SIZE), then
    `finish()`: the sorted scene boundaries [(first, end)]."""

    def __init__(self, fps, cut_threshold, dissolve_threshold, flash_frames):
        self.fps = float(fps or 25.0)  # timecodes only: ContentDetector counts frames here (min_scene_len 0)
        self.threshold, self.dissolve_threshold, self.flash_frames = cut_threshold, dissolve_threshold, flash_frames
        self.detector = ContentDetector(threshold=cut_threshold, min_scene_len=0)
        self.index = 0
        self.recent = collections.deque(maxlen=flash_frames + 2)  # (index, frame) for the flash check
        self.pending = []  # [index of a detected cut, its frame before]
        self.suppress_until = -1  # detected cuts up to this frame lie inside a flash
        self.cuts = []
        self.blend = collections.deque(maxlen=2 * DISSOLVE_HALF + 1)  # (tiny frame, it normalised)
        self.dissolving = []  # indices of frames found inside a dissolve
        self.compensator = Compensator()

    def add(self, small, tiny):
        index = self.index
        self._resolve_pending(index, small)
        if self.detector.process_frame(FrameTimecode(index, self.fps), _bgr(tiny)) and index > 0:
            before = self.recent[-1][1]
            moved = self._score(self.compensator.warp(before, small), small)
            if index > self.suppress_until and moved > MOTION_SHARE * self._score(before, small):
                self.pending.append((index, before))
        self.recent.append((index, small))
        self._check_dissolve(tiny)
        self.index += 1

    def _score(self, before, after):
        """ContentDetector's score between two RGB frames (read from its StatsManager)."""
        probe = ContentDetector(threshold=self.threshold, min_scene_len=0)
        probe.stats_manager = StatsManager()
        probe.process_frame(FrameTimecode(0, self.fps), _bgr(before))
        probe.process_frame(FrameTimecode(1, self.fps), _bgr(after))
        return probe.stats_manager.get_metrics(1, [ContentDetector.FRAME_SCORE_KEY])[0]

    def _resolve_pending(self, index, small):
        """A pending cut k becomes a flash when frame `index` (k < index <= k + flash_frames) matches frame
        k - 1, or a cut once `index` is past k + flash_frames."""
        still = []
        for cut, before in self.pending:
            if index > cut + self.flash_frames:
                self.cuts.append(cut)
            elif self._score(before, small) < self.threshold:
                self.suppress_until = max(self.suppress_until, index)
            else:
                still.append((cut, before))
        # cuts inside a flash just found (its way back) are dropped with it
        self.pending = [(cut, before) for cut, before in still if cut > self.suppress_until]

    def _check_dissolve(self, tiny):
        self.blend.append((tiny, tiny.astype(np.float32) / max(float(tiny.mean()), DARK)))
        if len(self.blend) < self.blend.maxlen:
            return
        (start, first), middle, (end, last) = self.blend[0], self.blend[DISSOLVE_HALF][1], self.blend[-1]
        change = float(np.abs(last - first).mean())
        if change < self.dissolve_threshold or float(np.abs(middle - (first + last) / 2).mean()) > LINEARITY * change:
            return
        if float(np.abs(self.compensator.warp(start, end, first) - last).mean()) >= UNEXPLAINED * change:
            self.dissolving.append(self.index - DISSOLVE_HALF)

    def finish(self):
        """The scene boundaries of the frames added: hard cuts as (k, k), dissolves as the frames dropped."""
        self.cuts.extend(cut for cut, _ in self.pending)
        self.pending = []
        boundaries = []
        runs = []
        for index in self.dissolving:
            if runs and index == runs[-1][1] + 1:
                runs[-1][1] = index
            else:
                runs.append([index, index])
        for first, last in runs:
            boundaries.append((max(first - DISSOLVE_HALF, 0), min(last + DISSOLVE_HALF + 1, self.index)))
        for cut in self.cuts:  # a cut inside a dropped dissolve is part of it
            if not any(first <= cut <= end for first, end in boundaries):
                boundaries.append((cut, cut))
        return sorted(boundaries)


def _bgr(frame):
    return cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)  # PySceneDetect's detectors take OpenCV's order


def scenes(frames, boundaries, trim_frames):
    """The scenes [(start, end)] of a video of `frames` frames: the frames between boundaries, less
    `trim_frames` on each side of a boundary (not at the video's own start and end); empty ones left out."""
    edges = [(0, 0)] + list(boundaries) + [(frames, frames)]
    found = []
    for (_, start), (end, _) in zip(edges, edges[1:]):
        start += trim_frames if start > 0 else 0
        end -= trim_frames if end < frames else 0
        if end > start:
            found.append((start, end))
    return found
