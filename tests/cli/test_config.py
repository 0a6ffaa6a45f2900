"""The key tables behind every command: defaults, YAML < command line, the seed's spellings, unknown
keys, wrong types and ranges refused by name, the data_config merge; `--keys` for every command; and
the resolved config saved with each job."""
import json
import math
import os
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from latte_core.errors import UserError
from latte_core.keys import read_yaml_mapping
from latte_toolkit.cli import main
from latte_toolkit.cli.convert import CONVERT_LATTE_KEYS, CONVERT_VAE_KEYS
from latte_toolkit.inference.config import FVD_KEYS, QUALITY_KEYS, SAMPLE_KEYS
from latte_toolkit.pipelines import config as stages
from latte_toolkit.tools.config import (BENCH_ATTENTION_KEYS, BENCH_CACHE_KEYS, BENCH_CURATE_KEYS, BENCH_FVD_KEYS,
                                        BENCH_INGEST_KEYS, BENCH_LOADER_KEYS, BENCH_STEP_KEYS, BENCH_VAE_KEYS,
                                        DEMO_KEYS)
from latte_toolkit.train.config import TRAIN_KEYS, TRAIN_VAE_KEYS

from media import moving_square_frames, one_error_line, snapshot, write_mp4

LATTE = os.path.join(os.path.dirname(sys.executable), "latte")

# (command, its table, values for its required keys)
STAGES = [
    (["ingest"], stages.INGEST_KEYS, {"sources": ["videos"], "out": "work/ingest"}),
    (["curate"], stages.CURATE_KEYS, {"manifest": "work/ingest", "out": "work/curate"}),
    (["cache"], stages.CACHE_KEYS, {"manifest": "work/ingest", "vae": "vae", "out": "work/cache"}),
    (["report"], stages.REPORT_KEYS, {"cache": "work/cache"}),
    (["train"], TRAIN_KEYS, {"data_folder": "work/cache"}),
    (["train-vae"], TRAIN_VAE_KEYS, {"manifest": "work/ingest", "out": "vae"}),
    (["sample"], SAMPLE_KEYS, {}),
    (["quality"], QUALITY_KEYS, {"samples": "samples", "manifest": "work/ingest", "vae_checkpoint": "vae"}),
    (["demo"], DEMO_KEYS, {}),
    (["eval", "fvd"], FVD_KEYS, {"real": "real", "fake": "samples", "i3d": "i3d_pretrained_400.pt"}),
    (["convert", "latte"], CONVERT_LATTE_KEYS, {"source": "a.pt", "target": "a.ckpt"}),
    (["convert", "vae"], CONVERT_VAE_KEYS, {"source": "vae", "target": "vae.ckpt"}),
    (["bench", "step"], BENCH_STEP_KEYS, {}),
    (["bench", "vae"], BENCH_VAE_KEYS, {}),
    (["bench", "fvd"], BENCH_FVD_KEYS, {}),
    (["bench", "ingest"], BENCH_INGEST_KEYS, {"sources": ["videos"]}),
    (["bench", "curate"], BENCH_CURATE_KEYS, {}),
    (["bench", "cache"], BENCH_CACHE_KEYS, {}),
    (["bench", "loader"], BENCH_LOADER_KEYS, {}),
    (["bench", "attention"], BENCH_ATTENTION_KEYS, {}),
]
IDS = [" ".join(command) for command, _, _ in STAGES]


def _yaml(tmp_path, mapping, name="stage.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(mapping))
    return str(path)


def _first_settable(table, required):
    """A key the test can set to two valid values, and its type's name in the table's error text."""
    key = next(key for key in table.keys if key.name not in required and not key.choices and
               any(t in (int, float, str) for t in key.types) and not isinstance(key.default, (bool, list)))
    if str in key.types:
        return key, ("from-yaml", "from-command-line"), 5
    low = key.range.low if key.range is not None and math.isfinite(key.range.low) else 0
    numeric = float if float in key.types else int
    return key, tuple(numeric(low + step) for step in (3, 5)), "x"


@pytest.mark.parametrize("command, table, required", STAGES, ids=IDS)
def test_defaults_fill_every_key_and_fit_their_own_checks(command, table, required):
    values = table.load(None, required)
    assert set(values) == set(table.by_name)
    for key in table.keys:
        assert key.doc, key.name
        if key.name in required:
            assert values[key.name] == required[key.name]
            continue
        assert values[key.name] == key.default, key.name
        assert isinstance(key.default, key.types), f"{key.name}: a default outside its types makes it required"
        if key.choices:
            assert key.default in key.choices, key.name
        if key.range is not None and key.default is not None:
            assert key.default in key.range, key.name
    assert table.missing(values) == []


@pytest.mark.parametrize("command, table, required", STAGES, ids=IDS)
def test_yaml_overrides_the_default_and_the_command_line_overrides_both(tmp_path, command, table, required):
    key, (from_yaml, from_command_line), _ = _first_settable(table, required)
    path = _yaml(tmp_path, {**required, key.name: from_yaml})
    assert table.load(path)[key.name] == from_yaml
    assert table.load(path, {key.name: from_command_line})[key.name] == from_command_line
    assert table.load(path, {key.name: None})[key.name] == from_yaml  # an option not given leaves the YAML's


@pytest.mark.parametrize("command, table, required", STAGES, ids=IDS)
def test_unknown_keys_wrong_types_and_values_out_of_range_are_refused_by_name(tmp_path, command, table, required):
    path = _yaml(tmp_path, {**required, "frobnicate": 1})
    with pytest.raises(UserError, match=r"stage.yaml: unknown key 'frobnicate'; known keys: "):
        table.load(path)
    key, _, wrong = _first_settable(table, required)
    with pytest.raises(UserError, match=rf"stage.yaml: {key.name} must be [a-zA-Z/]+, got {wrong!r}"):
        table.load(_yaml(tmp_path, {**required, key.name: wrong}))
    for ranged in [k for k in table.keys if k.range is not None and math.isfinite(k.range.low)]:
        below = ranged.range.low - 1
        with pytest.raises(UserError, match=rf"command line: {ranged.name} must be .*, got "):
            table.load(None, {**required, ranged.name: int(below) if float not in ranged.types else below})
    for chosen in [k for k in table.keys if k.choices]:
        with pytest.raises(UserError, match=rf"{chosen.name} must be one of "):
            table.load(None, {**required, chosen.name: "no-such-choice"})


def _bomb(levels=8):
    """A value (its anchors inside it) of ten 1s, then `levels` lists each of ten aliases of the last:
    about 500 bytes that stand for 10 ** (levels + 1) values."""
    lists = ["&a0 [" + ", ".join(["1"] * 10) + "]"]
    lists += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels + 1)]
    return "[" + ", ".join(lists) + "]"


def _bad_documents(key, required):
    """{case: (YAML text, words its Error line holds)} for a command whose table has `key`."""
    lines = "".join(f"{name}: {json.dumps(value)}\n" for name, value in required.items())
    at = f"key '{key.name}' (line {len(required) + 1}): "  # where a refused value stands
    wrong = list(range(50_000)) if str in key.types else "x" * 10_000  # of another type than the key's
    size = "(a list of 50,000 items, " if str in key.types else "(a str of 10,000 characters)"
    return {
        "alias bomb": (f"{lines}{key.name}: {_bomb()}\n", f"{at}its aliases expand to more than 100,000 values"),
        "alias into itself": (f"{lines}{key.name}: &loop [1, *loop]\n",
                              f"{at}an alias refers to a value that contains it"),
        "duplicate key": (f"{key.name}: 1\n{lines}{key.name}: 2\n",
                          f"key '{key.name}' appears twice, on lines 1 and {len(required) + 2}"),
        "over 1 MiB": (f"{lines}# {'x' * (1 << 20)}\n", "more than a config may hold (1,048,576): it is not parsed"),
        "long value": (f"{lines}{key.name}: {json.dumps(wrong)}\n", f"{key.name} must be"),
        "long unknown key": (f"{lines}? {'k' * 10_000}\n: 1\n", "unknown key 'kkkk"),  # `?`: a key past 1024 chars
    }, size


@pytest.mark.parametrize("command, table, required", [s for s in STAGES if s[0] != ["convert", "vae"]],
                         ids=[i for i in IDS if i != "convert vae"])  # its --config is a diffusers config.json
def test_documents_that_would_flood_memory_or_the_error_line_are_one_bounded_error(tmp_path, command, table,
                                                                                  required):
    """Through the command: each case is one Error line naming the file and the key (a value shown as
    its first 80 characters, its type and size), exit 2, nothing written."""
    key, _, _ = _first_settable(table, required)
    documents, size = _bad_documents(key, required)
    for case, (text, words) in documents.items():
        path = tmp_path / "stage.yaml"
        path.write_text(text)
        before = snapshot(tmp_path)
        result = CliRunner().invoke(main, command + ["-c", str(path)])
        assert result.exit_code == 2, (case, result.output[:500])
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and errors[0].startswith(f"Error: {path}: "), (case, result.output[:500])
        # the input adds at most its first 80 characters and its size; an unknown key's line lists the known ones
        known = len(", ".join(set(table.by_name) | set(table.aliases))) if case == "long unknown key" else 0
        assert words in errors[0] and len(errors[0]) < 300 + len(str(path)) + known, (case, errors[0][:500])
        if case == "long value":
            assert size in errors[0], errors[0]
        assert snapshot(tmp_path) == before, case


def test_duplicate_keys_are_found_in_nested_and_flow_mappings_and_merge_keys_stay_allowed(tmp_path):
    path = tmp_path / "stage.yaml"
    path.write_text("out: work/ingest\ndata_config: {sample_n_frames: 4, sample_n_frames: 5}\n")
    with pytest.raises(UserError, match=r"stage.yaml: key 'sample_n_frames' appears twice, on lines 2 and 2 "):
        stages.INGEST_KEYS.load(str(path))
    # `<<` merges a mapping whose keys the explicit ones override: YAML's rule, not a duplicate
    path.write_text("base: &d {num_frames: 4, sample_stride: 2}\nstage:\n  <<: *d\n  num_frames: 8\n")
    assert read_yaml_mapping(str(path))["stage"] == {"num_frames": 8, "sample_stride": 2}


def test_an_alias_bomb_and_a_50_mb_config_are_refused_at_once_by_the_commands(tmp_path):
    """The issue's cases as processes: `betas` (train) and `prompts` (sample) holding an alias bomb of
    10 ** 9 values, and a 50 MB config, each one Error line within the timeout (before: 22 GB and a kill)."""
    cases = {"train": f"betas: {_bomb()}\n", "sample": f"prompts: {_bomb()}\n",
             "ingest": "sources:\n" + "  - a-video-path-of-some-length.mp4\n" * 1_500_000}
    for command, text in cases.items():
        path = tmp_path / f"{command}.yaml"
        path.write_text(text)
        before = snapshot(tmp_path)
        done = subprocess.run([LATTE, command, "-c", str(path)], capture_output=True, text=True, timeout=60,
                              cwd=tmp_path)
        line = one_error_line(done, 2, path)
        assert ("more than 100,000 values" if command != "ingest" else "more than a config may hold") in line
        assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command, table, required", [s for s in STAGES if s[1].aliases],
                         ids=[i for i, s in zip(IDS, STAGES) if s[1].aliases])
def test_the_seeds_spellings_set_their_keys(tmp_path, command, table, required):
    for alias, name in table.aliases.items():
        key = table.by_name[name]
        current = required.get(name, key.default)
        if key.choices:
            value = next(choice for choice in key.choices if choice not in (None, current))
        elif current is None:
            value = "given" if str in key.types else 3
        elif isinstance(current, (int, float)):
            value = type(current)(current + 1)
        else:
            value = current + ["given"] if isinstance(current, list) else current + "-given"
        loaded = table.load(_yaml(tmp_path, {**{k: v for k, v in required.items() if k != name}, alias: value}))
        assert loaded[name] == value, alias


def test_the_data_config_section_and_file_are_merged_and_checked(tmp_path):
    (tmp_path / "data.yaml").write_text("data_config:\n  data_folder: clips/\n  sample_n_frames: 4\n")
    path = _yaml(tmp_path, {"data_config_file": "data.yaml", "out": "work/ingest", "workers": 0})
    with pytest.raises(UserError, match="unknown key 'data_config_file'"):  # a training key, not an ingest one
        stages.INGEST_KEYS.load(path)
    path = _yaml(tmp_path, {"data_config": {"data_folder": "clips/", "sample_n_frames": 4}, "out": "work/ingest"})
    loaded = stages.INGEST_KEYS.load(path, {"workers": 0})
    assert (loaded["sources"], loaded["num_frames"], loaded["workers"]) == ("clips/", 4, 0)
    with pytest.raises(UserError, match="stage.yaml: data_config must be a mapping"):
        stages.CACHE_KEYS.load(_yaml(tmp_path, {"data_config": [1, 2]}))
    # training: a data_config_file's data_config: section, found beside the config
    (tmp_path / "train_data.yaml").write_text("data_config:\n  data_folder: work/cache\n  sample_stride: 3\n")
    trained = TRAIN_KEYS.load(_yaml(tmp_path, {"data_config_file": "train_data.yaml", "num_frames": 8}))
    assert (trained["data_folder"], trained["sample_stride"], trained["num_frames"]) == ("work/cache", 3, 8)
    with pytest.raises(UserError, match="data_config_file 'nowhere.yaml' not found"):
        TRAIN_KEYS.load(_yaml(tmp_path, {"data_config_file": "nowhere.yaml"}))


def test_a_required_key_left_unset_names_its_flag_and_its_key():
    result = CliRunner().invoke(main, ["cache", "--vae", "vae", "--out", "work/cache"])
    assert result.exit_code == 2 and result.stderr.splitlines() == [
        "Error: give --manifest (or `manifest:` in the config)"]
    result = CliRunner().invoke(main, ["quality", "--manifest", ".", "--vae", "vae"])
    assert result.exit_code == 2 and "give SAMPLES_DIR (or `samples:` in the config)" in result.stderr


@pytest.mark.parametrize("command, table, required", STAGES, ids=IDS)
def test_keys_lists_every_key_of_the_commands_table(command, table, required):
    result = CliRunner().invoke(main, [*command, "--keys"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split(" [")[0] for line in lines] == [key.name for key in table.keys]
    for key, line in zip(table.keys, lines):
        assert ("[required]" in line) == (key.name in required and not isinstance(key.default, key.types))
        for alias in [a for a, name in table.aliases.items() if name == key.name]:
            assert alias in line
    assert "Example" in CliRunner().invoke(main, [*command, "--help"]).output


def test_a_range_on_the_command_line_is_refused_by_the_flag(tmp_path):
    result = CliRunner().invoke(main, ["bench", "step", "--steps", "1"])
    assert result.exit_code == 2 and "'--steps'" in result.stderr and "x>=2" in result.stderr
    result = CliRunner().invoke(main, ["train-vae", "--manifest", str(tmp_path), "--out", str(tmp_path / "v"),
                                       "--block-out-channels", "32,x"])
    assert result.exit_code == 2 and "'--block-out-channels'" in result.stderr and not (tmp_path / "v").exists()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("config_jobs")
    for i in range(2):
        write_mp4(root / "src" / f"clip_{i}.mp4", moving_square_frames(8 + 2 * i, height=40, width=56, seed=i))
    return root


def test_ingest_saves_its_resolved_config_yaml_under_the_options(clips, tmp_path):
    out = tmp_path / "ingest"
    config = _yaml(tmp_path, {"data_config": {"data_folder": str(clips / "src"), "sample_n_frames": 9},
                              "unit_size": 1, "workers": 1})
    result = CliRunner().invoke(main, ["ingest", "-c", config, "--out", str(out), "--num_frames", "4",
                                       "--workers", "0"])
    assert result.exit_code == 0, result.output
    resolved = json.loads((out / stages.RESOLVED_CONFIG).read_text())
    assert resolved == {**stages.INGEST_KEYS.load(None, {"sources": ["x"], "out": "x"}),
                        "sources": str(clips / "src"), "out": str(out), "num_frames": 4, "unit_size": 1, "workers": 0}
    assert json.loads((out / "ingest.json").read_text())["num_frames"] == 4  # the job's own fingerprint, apart
    assert not [p.name for p in out.iterdir() if p.name.startswith(".staging-")]


def test_cache_takes_the_seeds_spellings_and_saves_its_resolved_config(clips, fixtures_dir, tmp_path):
    ingest = tmp_path / "ingest"
    assert CliRunner().invoke(main, ["ingest", "--source", str(clips / "src"), "--out", str(ingest),
                                     "--workers", "0"]).exit_code == 0
    out = tmp_path / "cache"
    config = _yaml(tmp_path, {"vae_path": str(fixtures_dir / "vae" / "vae_small_diffusers"), "sample_size": 64,
                              "shard_videos": 1})
    result = CliRunner().invoke(main, ["cache", "-c", config, "--manifest", str(ingest), "--cache_folder", str(out),
                                       "--cache_file_type", "parquet", "--image_size", "32", "--workers", "0",
                                       "--resume_cache_index", "1", "--chunk-frames", "4"])
    assert result.exit_code == 0, result.output
    resolved = json.loads((out / stages.RESOLVED_CONFIG).read_text())
    assert {k: resolved[k] for k in ("out", "format", "image_size", "skip_videos", "shard_videos", "chunk_frames")} \
        == {"out": str(out), "format": "parquet", "image_size": 32, "skip_videos": 1, "shard_videos": 1,
            "chunk_frames": 4}
    assert json.loads((out / "cache.json").read_text())["format"] == "parquet"
    report = CliRunner().invoke(main, ["report", "-c", _yaml(tmp_path, {"cache": str(out), "verify": True},
                                                               "report.yaml"), "--json"])
    assert report.exit_code == 0, report.output
    assert json.loads(report.output)["videos"] == 1 and json.loads(report.output)["verified_shards"] == 1
