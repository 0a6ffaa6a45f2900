"""PNG plots drawn with matplotlib's Figure (its Agg canvas: no display, no pyplot state, whatever
backend the process chose): a run's loss curve, a cache job's seconds per phase and a curate job's
histograms (`latte report --plot`)."""
import math

from matplotlib.figure import Figure


def running_mean(values, window):
    """Mean of each value and the window - 1 before it (fewer at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_loss_curve(steps, losses, path, title="training loss", learning_rates=None, quartile_losses=None):
    """Write loss_figure(...) to the PNG `path`; returns the path."""
    return _save(loss_figure(steps, losses, title, learning_rates, quartile_losses), path)


def plot_phase_seconds(shards, path, title="seconds per phase"):
    """Write phase_figure(...) to the PNG `path`; returns the path."""
    return _save(phase_figure(shards, title), path)


def plot_histograms(panels, path, title):
    """Write histogram_figure(...) to the PNG `path`; returns the path."""
    return _save(histogram_figure(panels, title), path)


def histogram_figure(panels, title):
    """Side-by-side histograms, one per panel (x label, {series name: values}), the series stacked on
    shared bins (e.g. the clips kept and those dropped)."""
    figure = Figure(figsize=(5 * max(1, len(panels)), 4), dpi=100)
    axes = figure.subplots(1, max(1, len(panels)), squeeze=False)[0]
    colours = ("#4c8bd6", "#e08a2e", "#59a85b", "#b05fc4")
    for axis, (label, series) in zip(axes, panels):
        drawn = {name: values for name, values in series.items() if len(values)}
        if drawn:
            axis.hist(list(drawn.values()), bins=30, stacked=True, color=colours[:len(drawn)],
                      label=[f"{name} ({len(values)})" for name, values in drawn.items()])
            axis.legend(loc="upper right")
        axis.set_xlabel(label)
        axis.set_ylabel("clips")
        axis.grid(True, alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def _save(figure, path):
    figure.savefig(path)
    return path


QUARTILE_COLOURS = ("#2a9d8f", "#8ab17d", "#e9c46a", "#e76f51")


def loss_figure(steps, losses, title="training loss", learning_rates=None, quartile_losses=None):
    """Loss against step on a log-scaled axis (each step faint, a running mean over 2 % of the run on top);
    with `quartile_losses` (per step 4 values or None: the loss of the samples whose timestep fell in each
    quarter of the schedule), a running mean per quarter; with `learning_rates` (one per step), the
    learning rate on a second axis. Non-finite and non-positive losses cannot be drawn on a log axis and
    are left out."""
    points = [(s, v) for s, v in zip(steps, losses) if v is not None and v > 0 and math.isfinite(v)]
    figure = Figure(figsize=(8, 4.5), dpi=100)
    axis = figure.subplots()
    if points:
        xs, ys = zip(*points)
        axis.plot(xs, ys, color="#9db4e0", linewidth=0.8, label="loss")
        axis.plot(xs, running_mean(ys, max(1, len(ys) // 50)), color="#173c9e", linewidth=1.8,
                  label="running mean")
        axis.set_yscale("log")
    for quarter, colour in enumerate(QUARTILE_COLOURS if quartile_losses else ()):
        quarter_points = [(s, q[quarter]) for s, q in zip(steps, quartile_losses)
                          if q and q[quarter] is not None and q[quarter] > 0 and math.isfinite(q[quarter])]
        if quarter_points:
            xs, ys = zip(*quarter_points)
            axis.plot(xs, running_mean(ys, max(1, len(ys) // 50)), color=colour, linewidth=1.2,
                      label=f"t in quarter {quarter + 1} of 4 (running mean)")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss (log scale)")
    axis.set_title(title)
    axis.grid(True, which="both", alpha=0.3)
    handles, labels = axis.get_legend_handles_labels()
    if learning_rates is not None and len(learning_rates) == len(steps) and len(steps):
        rate_axis = axis.twinx()
        rate_axis.plot(steps, learning_rates, color="#d0671f", linewidth=1.2, label="learning rate")
        rate_axis.set_ylabel("learning rate")
        rate_axis.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        more_handles, more_labels = rate_axis.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    if handles:
        axis.legend(handles, labels, loc="upper right")
    figure.tight_layout()
    return figure


def phase_figure(shards, title="seconds per phase"):
    """One stacked horizontal bar per shard (in commit order) of its seconds per phase.

    shards: [(shard id, {phase: seconds})]."""
    phases = sorted({phase for _, seconds in shards for phase in seconds}, key=["decode", "encode", "write"].index)
    height = max(2.5, 0.28 * len(shards) + 1.5)
    figure = Figure(figsize=(8, min(height, 40)), dpi=100)
    axis = figure.subplots()
    colours = {"decode": "#4c8bd6", "encode": "#e08a2e", "write": "#59a85b"}
    lefts = [0.0] * len(shards)
    positions = list(range(len(shards)))
    for phase in phases:
        widths = [seconds.get(phase, 0.0) for _, seconds in shards]
        totals = sum(widths)
        axis.barh(positions, widths, left=lefts, color=colours.get(phase), label=f"{phase} ({totals:.1f} s)")
        lefts = [left + width for left, width in zip(lefts, widths)]
    axis.set_yticks(positions, [shard for shard, _ in shards], fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel("seconds (decode: the encoder waiting for frames)")
    axis.set_ylabel("shard")
    axis.set_title(title)
    axis.grid(True, axis="x", alpha=0.3)
    if shards:
        axis.legend(loc="lower right")
    figure.tight_layout()
    return figure


def save_frame_grid(rows, column_titles, path):
    """A PNG of labelled rows of frames: rows [(label, uint8 (K, H, W, 3))], K frames each, one column per
    title (`latte diagnose`'s decoded x0 predictions across timesteps)."""
    figure = Figure(figsize=(1.6 * len(column_titles) + 1.2, 1.5 * len(rows)), dpi=80)
    axes = figure.subplots(len(rows), len(column_titles), squeeze=False)
    for (label, frames), row in zip(rows, axes):
        for frame, axis in zip(frames, row):
            axis.imshow(frame)
            axis.set_xticks([])
            axis.set_yticks([])
        row[0].set_ylabel(label, fontsize=7)
    for title, axis in zip(column_titles, axes[0]):
        axis.set_title(title, fontsize=7)
    figure.tight_layout()
    return _save(figure, path)
