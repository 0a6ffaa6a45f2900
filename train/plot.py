"""A loss-curve PNG drawn with Pillow (no plotting library needed)."""
import math

from PIL import Image, ImageDraw

WIDTH, HEIGHT, MARGIN = 640, 400, 56


def plot_loss_curve(steps, losses, path, title="training loss"):
    """Loss against step on a log-scaled y axis (raw values faint, a running mean on top)."""
    points = [(s, v) for s, v in zip(steps, losses) if v is not None and v > 0 and math.isfinite(v)]
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, 12), title, fill="black")
    left, top, right, bottom = MARGIN, 36, WIDTH - 16, HEIGHT - MARGIN + 8
    draw.rectangle((left, top, right, bottom), outline="black")
    if points:
        first, last = points[0][0], max(points[-1][0], points[0][0] + 1)
        logs = [math.log10(v) for _, v in points]
        low, high = min(logs), max(max(logs), min(logs) + 1e-3)

        def xy(step, log_value):
            return (left + (right - left) * (step - first) / (last - first),
                    bottom - (bottom - top) * (log_value - low) / (high - low))

        draw.line([xy(s, lv) for (s, _), lv in zip(points, logs)], fill=(170, 190, 230), width=1)
        window = max(1, len(points) // 50)
        smooth = [sum(logs[max(0, i - window + 1):i + 1]) / len(logs[max(0, i - window + 1):i + 1])
                  for i in range(len(logs))]
        draw.line([xy(s, lv) for (s, _), lv in zip(points, smooth)], fill=(20, 60, 160), width=2)
        for log_value in (low, (low + high) / 2, high):
            draw.text((4, xy(first, log_value)[1] - 6), f"{10 ** log_value:.3g}", fill="black")
        draw.text((left, bottom + 8), f"step {first}", fill="black")
        draw.text((right - 80, bottom + 8), f"step {last}", fill="black")
    image.save(path)
    return path
