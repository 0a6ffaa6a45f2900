import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from latte_toolkit.cli import main
from latte_core.plot import loss_figure, phase_figure, plot_loss_curve, running_mean


def test_loss_figure_has_labelled_log_axes_and_the_learning_rate_on_its_own_axis():
    steps = list(range(1, 201))
    losses = [1.0 / s for s in steps]
    rates = [min(1.0, s / 20) * 3e-4 for s in steps]
    figure = loss_figure(steps, losses, "Latte-S/2 loss", rates)
    loss_axis, rate_axis = figure.axes
    assert loss_axis.get_yscale() == "log" and rate_axis.get_yscale() == "linear"
    assert loss_axis.get_xlabel() == "optimizer step" and "loss" in loss_axis.get_ylabel()
    assert rate_axis.get_ylabel() == "learning rate" and loss_axis.get_title() == "Latte-S/2 loss"
    raw, mean = loss_axis.get_lines()
    np.testing.assert_array_equal(raw.get_ydata(), losses)
    assert list(rate_axis.get_lines()[0].get_ydata()) == rates
    assert [t.get_text() for t in loss_axis.get_legend().get_texts()] == ["loss", "running mean", "learning rate"]
    assert len(loss_figure(steps, losses).axes) == 1  # no rates, no second axis


def test_unplottable_losses_are_left_out_and_the_png_is_written(tmp_path):
    figure = loss_figure([1, 2, 3, 4], [0.5, float("nan"), 0.0, 0.25])
    assert list(figure.axes[0].get_lines()[0].get_xdata()) == [1, 4]
    path = plot_loss_curve([1, 2, 3], [1.0, 0.5, 0.25], tmp_path / "curve.png", learning_rates=[1e-4] * 3)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (800, 450)


def test_running_mean_averages_the_window_before_each_value():
    assert running_mean([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert running_mean([2.0, 4.0], 1) == [2.0, 4.0]


def test_phase_figure_stacks_each_shards_seconds_in_commit_order():
    shards = [("s-b", {"decode": 1.0, "encode": 3.0, "write": 0.5}), ("s-a", {"decode": 2.0, "encode": 1.0, "write": 0.25})]
    axis = phase_figure(shards).axes[0]
    bars = axis.patches
    assert [round(bar.get_width(), 3) for bar in bars] == [1.0, 2.0, 3.0, 1.0, 0.5, 0.25]
    assert [round(bar.get_x(), 3) for bar in bars] == [0.0, 0.0, 1.0, 2.0, 4.0, 3.0]  # stacked
    assert [label.get_text() for label in axis.get_yticklabels()] == ["s-b", "s-a"]
    assert [t.get_text() for t in axis.get_legend().get_texts()] == ["decode (3.0 s)", "encode (4.0 s)",
                                                                    "write (0.8 s)"]


def test_report_plot_draws_the_cache_phases(caches, tmp_path):
    png = tmp_path / "phases.png"
    result = CliRunner().invoke(main, ["report", str(caches["numpy"]), "--json", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["plot"] == str(png)
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] == 800
