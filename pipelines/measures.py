"""Per-frame measures of one video for `latte curate`, fed its analysis frames in order (short side
scenes.ANALYSIS_SIZE), then read per clip.

- Motion: OpenCV's DIS optical flow (ultrafast preset) on the grey analysis frames, frame i to i+1 for
  every even i (half the frames' pairs: the stage reads each frame once and stays near decoding's
  cost); a clip's motion is the mean flow magnitude over the pairs inside it, in pixels per frame at
  the analysis size (a 640x360 video's flow is measured at 228x128, and a drift of 8 px/frame at 640x360
  reads 2.8). Measured on textured drifts written as H.264 at 128 px: 0.0 static, 0.55 for 0.5 px/frame
  (DIS overestimates sub-pixel drifts by ~10 %), 1.98-2.03 for 2 and 7.99-8.06 for 8. The flow is
  averaged over the whole frame, letterbox bars included (they lower a letterboxed clip's motion).
- Perceptual hash: per frame, the DCT hash of the grey frame (at scenes.DETECT_SIZE) squeezed to 32x32 (the signs of its 8x8 lowest
  frequencies against their median, the constant term left out: 64 bits, robust to re-encoding,
  resizing and small shifts); a clip keeps HASHED_FRAMES of them, at 1/4, 1/2 and 3/4 of its length.
- Letterbox: on every 2nd frame (as the flow), the black rows at the top and bottom and black columns at each side (mean grey
  level at most BLACK); a frame that is more than half black is dark, not letterboxed, and is not
  counted. A clip's bars are the narrowest over its counted frames.
"""
import cv2
import numpy as np

BLACK = 24  # grey level of a bar (H.264's black decodes to 0-16 here)
HASHED_FRAMES = 3


class FrameMeasures:
    """`add(small, tiny)` each analysis frame in order (and it at scenes.DETECT_SIZE); then motion, bars
    and hashes of any frame range."""

    def __init__(self):
        self.flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        self.previous = None
        self.magnitudes = {}  # even frame i -> mean flow magnitude from i to i + 1
        self.frame_bars = []  # per frame: (top, bottom, left, right) in analysis pixels, or None (dark or odd)
        self.frame_hashes = []  # per frame: its 64-bit DCT hash
        self.size = None

    def add(self, small, tiny):
        grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        index = len(self.frame_bars)
        if index % 2 == 1:
            flow = self.flow.calc(self.previous, grey, None)
            self.magnitudes[index - 1] = float(cv2.magnitude(flow[..., 0], flow[..., 1]).mean())
        self.previous = grey
        self.size = grey.shape
        self.frame_bars.append(_bars(grey) if index % 2 == 0 else None)
        self.frame_hashes.append(dct_hash(cv2.cvtColor(tiny, cv2.COLOR_RGB2GRAY)))

    def motion(self, start, end):
        """Mean flow magnitude (px/frame at the analysis size) over the measured pairs in [start, end);
        0.0 for a range without one."""
        values = [self.magnitudes[i] for i in range(start + start % 2, end - 1, 2)]
        return float(np.mean(values)) if values else 0.0

    def hashes(self, start, end):
        """The clip's HASHED_FRAMES frame hashes (at 1/4, 1/2, 3/4 of [start, end)) as 8-byte big-endian words."""
        picks = [start + (end - start) * (k + 1) // (HASHED_FRAMES + 1) for k in range(HASHED_FRAMES)]
        return b"".join(self.frame_hashes[i].to_bytes(8, "big") for i in picks)

    def bars(self, start, end, height, width):
        """(top, bottom, left, right) black bars of the frames [start, end), in pixels of the displayed
        (height, width) frame, each rounded up to an even number; zeros when none."""
        counted = [bars for bars in self.frame_bars[start:end] if bars is not None]
        if not counted:
            return 0, 0, 0, 0
        narrowest = np.min(np.array(counted), axis=0)
        scale = np.array([height, height, width, width]) / np.array([self.size[0]] * 2 + [self.size[1]] * 2)
        return tuple(int(2 * np.ceil(bar * s / 2)) if bar else 0 for bar, s in zip(narrowest, scale))


def dct_hash(grey):
    """64-bit DCT hash of a grey uint8 frame (see the module docstring)."""
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].ravel()
    bits = low > np.median(low[1:])
    bits[0] = False  # the constant term (the mean brightness) is no part of the picture's structure
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hash_distances(hashes, others):
    """Mean Hamming distance (0-64) per frame between the hashes of one clip (bytes of hashes()) and each
    row of `others` (uint8 (N, 8 x HASHED_FRAMES)): float (N,)."""
    differ = np.unpackbits(np.bitwise_xor(np.frombuffer(hashes, np.uint8), others), axis=1)
    return differ.sum(axis=1) / HASHED_FRAMES


def _bars(grey):
    rows = cv2.reduce(grey, 1, cv2.REDUCE_AVG, dtype=cv2.CV_32F).ravel() <= BLACK
    columns = cv2.reduce(grey, 0, cv2.REDUCE_AVG, dtype=cv2.CV_32F).ravel() <= BLACK
    top, bottom = _run(rows), _run(rows[::-1])
    left, right = _run(columns), _run(columns[::-1])
    if top + bottom > len(rows) // 2 or left + right > len(columns) // 2:
        return None  # a dark picture, not a frame with bars
    return top, bottom, left, right


def _run(black):
    """How many leading entries are True."""
    return len(black) if black.all() else int(np.argmin(black))
