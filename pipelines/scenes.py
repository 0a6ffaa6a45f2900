"""Scene cuts of one video, fed its frames in order (pipelines/curate.py decodes each video once).

- Hard cuts: PySceneDetect's ContentDetector (the mean HSV change between consecutive frames, 0-255,
  against `cut_threshold`), on the analysis frames (short side ANALYSIS_SIZE).
- Brief flashes: a detected cut at frame k whose frame k-1 matches (ContentDetector's score below the
  threshold) one of the next `flash_frames` frames is an excursion that returns (a flash, a flicker), not a
  cut: it and any cut inside it are dropped.
- Dissolves: PySceneDetect has no detector for them (its TransNetV2 needs weights), so frames are checked
  for a linear blend over DISSOLVE_HALF frames each side. With g the frame divided by its mean brightness
  (so a fade, which only scales it, does not count), a frame i is inside a dissolve when the change
  d = mean|g[i+h] - g[i-h]| is at least `dissolve_threshold` and the frame lies on the straight line between
  them, mean|g[i] - (g[i-h] + g[i+h]) / 2| <= LINEARITY x d: a hard cut (the middle frame on one side, 0.5),
  a pan (pixels that move do not blend linearly) and a flash (0.5) are not linear. A run of such frames
  drops [first - h, last + h], which covers a linear dissolve of 2h frames or more.

A scene boundary is (first, end): frames [first, end) belong to no scene (empty for a hard cut at first).
"""
import collections

import cv2
import numpy as np
from scenedetect import FrameTimecode
from scenedetect.detectors import ContentDetector

ANALYSIS_SIZE = 128  # short side of the frames every curation measure sees (cuts here, motion, hashes)
DISSOLVE_SIZE = 32  # short side of the frames the dissolve check compares
DISSOLVE_HALF = 4  # h: frames each side of the middle one; dissolves of 2h = 8 frames and longer are found
LINEARITY = 0.25
DARK = 8.0  # mean brightness below which a frame is not normalised further (a fade to black)


def analysis_frame(frame, short_side=ANALYSIS_SIZE):
    """uint8 (H, W, 3) -> uint8 RGB with its short side `short_side` (area averaging when shrinking)."""
    height, width = frame.shape[:2]
    scale = short_side / min(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


class SceneCuts:
    """Feed `add(small)` the analysis frames of one video in order, then `finish()`: the sorted scene
    boundaries [(first, end)]."""

    def __init__(self, fps, cut_threshold, dissolve_threshold, flash_frames):
        self.fps = fps or 25.0  # timecodes only: ContentDetector counts frames here (min_scene_len 0)
        self.threshold, self.dissolve_threshold, self.flash_frames = cut_threshold, dissolve_threshold, flash_frames
        self.detector = ContentDetector(threshold=cut_threshold, min_scene_len=0)
        self.index = 0
        self.recent = collections.deque(maxlen=flash_frames + 2)  # (index, BGR frame) for the flash check
        self.pending = []  # [index of a detected cut, its frame before]
        self.suppress_until = -1  # detected cuts up to this frame lie inside a flash
        self.cuts = []
        self.blend = collections.deque(maxlen=2 * DISSOLVE_HALF + 1)  # normalised small frames
        self.dissolving = []  # indices of frames found inside a dissolve

    def add(self, small):
        bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
        index = self.index
        self._resolve_pending(index, bgr)
        if self.detector.process_frame(FrameTimecode(index, self.fps), bgr) and index > 0:
            if index > self.suppress_until:
                self.pending.append((index, self.recent[-1][1]))
        self.recent.append((index, bgr))
        self._check_dissolve(small)
        self.index += 1

    def _differs(self, before, after):
        probe = ContentDetector(threshold=self.threshold, min_scene_len=0)
        probe.process_frame(FrameTimecode(0, self.fps), before)
        return bool(probe.process_frame(FrameTimecode(1, self.fps), after))

    def _resolve_pending(self, index, bgr):
        """A pending cut k becomes a flash when frame `index` (k < index <= k + flash_frames) matches frame
        k - 1, or a cut once `index` is past k + flash_frames."""
        still = []
        for cut, before in self.pending:
            if index > cut + self.flash_frames:
                self.cuts.append(cut)
            elif not self._differs(before, bgr):
                self.suppress_until = max(self.suppress_until, index)
            else:
                still.append((cut, before))
        # cuts inside a flash just found (its way back) are dropped with it
        self.pending = [(cut, before) for cut, before in still if cut > self.suppress_until]

    def _check_dissolve(self, small):
        tiny = analysis_frame(small, DISSOLVE_SIZE).astype(np.float32)
        self.blend.append(tiny / max(float(tiny.mean()), DARK))
        if len(self.blend) < self.blend.maxlen:
            return
        first, middle, last = self.blend[0], self.blend[DISSOLVE_HALF], self.blend[-1]
        change = float(np.abs(last - first).mean())
        if change >= self.dissolve_threshold and float(np.abs(middle - (first + last) / 2).mean()) <= LINEARITY * change:
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
