"""`latte bench curate` prints its figures: the whole stage against decoding the same frames alone (tiny
videos here; README's figures are from its 640x360 default)."""
import json

from click.testing import CliRunner

from latte_toolkit.cli import main


def test_bench_curate_prints_the_stage_against_the_decode():
    result = CliRunner().invoke(main, ["bench", "curate", "--videos", "2", "--frames", "16", "--width", "128",
                                       "--height", "72", "--repeats", "1"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.strip().splitlines()[-1])
    assert (figures["videos"], figures["frames"], figures["size"]) == (2, 32, "128x72")
    assert figures["curate"]["cuts"] == 2  # one hard cut halfway through each video
    assert figures["curate_to_decode_seconds"] > 0 and figures["target"] == 1.5
    assert set(figures["curate"]["phase_seconds"]) == {"decode", "analyse", "write"}
    odd = CliRunner().invoke(main, ["bench", "curate", "--width", "127"])
    assert odd.exit_code == 2 and "--width must be even" in odd.output
