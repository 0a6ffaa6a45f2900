"""Jobs, training and sampling on an object store: a real S3 API server (moto's server mode, tests/s3server.py)
on a free 127.0.0.1 port, reached through s3fs as a cloud store is. Real videos, real jobs, real `latte`
processes where a kill, a second run or an outage is tested."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import s3fs
import yaml
from click.testing import CliRunner

from latte_core.errors import UserError
from latte_toolkit.cli import main
from latte_toolkit.datasets.cache import open_cache, read_ledger
from latte_toolkit.datasets.storage import StorageError, local_cache
from latte_toolkit.pipelines.cache import run_cache
from latte_toolkit.pipelines.ingest import run_ingest
from latte_toolkit.tools.synthetic import write_cloud_dataset

from media import one_error_line
from s3server import Proxy, S3Server

LATTE = os.path.join(os.path.dirname(sys.executable), "latte")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.environ.get("LATTE_FIXTURES", os.path.join(os.path.dirname(ROOT), "shared", "fixtures"))
VAE = os.path.join(FIXTURES, "vae", "vae_small_diffusers")
SECRET = "s3cr3t-never-written-4f1c"
STALE_S = "2"  # LATTE_LOCK_STALE_S of these tests: a killed run's lock is stale after 2 s


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s3 = S3Server(str(tmp_path_factory.mktemp("moto")))
    yield s3
    s3.stop()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    write_cloud_dataset(str(folder), videos=6, num_frames=8, size=32)
    return folder


@pytest.fixture()
def env(server, tmp_path, monkeypatch):
    """The job's environment: the server's endpoint and a test key (no real account), its own scratch."""
    values = {**server.env(), "LATTE_SCRATCH": str(tmp_path / "scratch"), "LATTE_LOCK_STALE_S": STALE_S}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return {**os.environ, **values}


def _fs(server):
    return s3fs.S3FileSystem(endpoint_url=server.url, key="testing-key", secret="testing-secret",
                             skip_instance_cache=True)


def _bucket(server, name, videos=None):
    fs = _fs(server)
    fs.mkdir(name)
    if videos is not None:
        fs.put(str(videos), f"{name}/src", recursive=True)
    return fs


def _objects(fs, prefix, skip=("ledger/", "config.resolved.json", ".lock")):
    """{key: bytes} of the objects under a prefix, without the ledger records (they hold seconds) and the
    resolved config."""
    found = {}
    for path in fs.find(prefix):
        key = path[len(prefix) + 1:]
        if not any(key.startswith(s) for s in skip):
            found[key] = fs.cat_file(path)
    return found


def _latte(env, *args, timeout=240):
    return subprocess.run([LATTE, *args], capture_output=True, text=True, timeout=timeout, env=env)


def _start(env, *args):
    return subprocess.Popen([LATTE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _kill_after_records(fs, proc, prefix, records, timeout=120):
    """SIGKILL `proc` once `records` ledger records are in the store; whether it was still running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        fs.invalidate_cache()
        if len(fs.find(f"{prefix}/ledger")) >= records:
            break
        time.sleep(0.02)
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return running


@pytest.mark.slow
def test_ingest_cache_train_sample_through_s3_equal_local_and_never_write_credentials(server, env, videos, tmp_path):
    """Sources, manifest, clips, cache and samples in s3://; the credentials given as storage_options appear in no
    object and no local file; the cached latents are bit-identical to a cache of the same videos made in
    local folders, and training reads the s3 cache (its shards each checked as they are fetched)."""
    fs = _bucket(server, "e2e", videos)
    options = {"endpoint_url": server.url, "key": "testing-key", "secret": SECRET}

    def job(command, **keys):
        path = tmp_path / f"{command}.yaml"
        path.write_text(yaml.safe_dump(keys))
        result = CliRunner().invoke(main, [command, "-c", str(path)])
        assert result.exit_code == 0, result.output
        return result

    clips = dict(min_clip_frames=4, max_clip_frames=8, min_motion=0.0, workers=0, unit_size=4)
    job("ingest", sources=["s3://e2e/src"], out="s3://e2e/ingest", workers=0, unit_size=4,
        storage_options=options)
    job("curate", manifest="s3://e2e/ingest", out="s3://e2e/curate", storage_options=options, **clips)
    job("cache", manifest="s3://e2e/curate", vae=VAE, out="s3://e2e/cache", image_size=32, shard_videos=4,
        workers=0, storage_options=options)
    job("ingest", sources=[str(videos)], out=str(tmp_path / "ingest"), workers=0, unit_size=4)
    job("curate", manifest=str(tmp_path / "ingest"), out=str(tmp_path / "curate"), **clips)
    job("cache", manifest=str(tmp_path / "curate"), vae=VAE, out=str(tmp_path / "cache"), image_size=32,
        shard_videos=4, workers=0)
    assert sorted(fs.find("e2e/cache/shards")) and fs.exists("e2e/cache/index.parquet")
    assert fs.find("e2e/cache/.lock") == []  # released

    local, remote = open_cache(str(tmp_path / "cache")), open_cache(local_cache("s3://e2e/cache", options))
    assert local.ids == remote.ids and len(remote.ids) == 6
    for video in local.ids:
        mine, theirs = local.read(video), remote.read(video)
        for field in mine:
            np.testing.assert_array_equal(np.asarray(theirs[field]), np.asarray(mine[field]), err_msg=video)

    train_yaml = tmp_path / "train.yaml"
    train_yaml.write_text(yaml.safe_dump({
        "model_name": "Latte-S/2", "depth": 2, "hidden_size": 32, "num_heads": 2, "image_size": 32, "num_frames": 4,
        "amp_level": "O0", "train_batch_size": 2, "max_steps": 2, "ckpt_save_interval": 2, "step_mode": True,
        "use_ema": False, "storage_options": options}))
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "-c", str(train_yaml), "--cache", "s3://e2e/cache",
                                       "--output-dir", str(run)])
    assert result.exit_code == 0, result.output
    checkpoint = run / "ckpt" / "step-00000002"
    sample_yaml = tmp_path / "sample.yaml"
    sample_yaml.write_text(yaml.safe_dump({"storage_options": options}))
    result = CliRunner().invoke(main, ["sample", "-c", str(sample_yaml), "--checkpoint", str(checkpoint),
                                       "--vae", VAE, "--num-videos", "2", "--steps", "2",
                                       "--output-dir", "s3://e2e/samples"])
    assert result.exit_code == 0, result.output
    summary = json.loads(fs.cat_file("e2e/samples/summary.json"))
    assert summary["files"] == ["s3://e2e/samples/sample_000.gif", "s3://e2e/samples/sample_001.gif"]
    assert all(fs.exists(f"e2e/samples/sample_00{i}.{ext}") for i in (0, 1) for ext in ("gif", "mp4", "npy"))

    # the secret: in the YAMLs given, nowhere else (objects, run folder, scratch)
    assert not [path for path in fs.find("e2e") if SECRET.encode() in fs.cat_file(path)]
    written = [os.path.join(root, name) for root, _, names in os.walk(tmp_path) for name in names
               if not name.endswith(".yaml")]
    assert not [path for path in written if SECRET.encode() in open(path, "rb").read()]
    for key in ("e2e/ingest/config.resolved.json", "e2e/curate/config.resolved.json", "e2e/cache/config.resolved.json"):
        assert json.loads(fs.cat_file(key))["storage_options"] == {k: "<redacted>" for k in options}
    assert json.loads((run / "config.json").read_text())["storage_options"]["secret"] == "<redacted>"
    assert json.loads((checkpoint / "state.json").read_text())["config"]["storage_options"]["secret"] == "<redacted>"


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_bytes_of_an_uninterrupted_run_and_a_second_run_is_refused(server, env, videos):
    """ingest (videos in s3) and cache, each killed with SIGKILL mid-job: while the cache job runs a second
    one is refused; the killed run's lock is refused without --break-lock while fresh and after, and
    taken over with it; the resume deletes the objects no record names and the abandoned multipart
    uploads, and its objects equal those of an uninterrupted run byte for byte."""
    fs = _bucket(server, "kill", videos)
    ingest = ["ingest", "--source", "s3://kill/src", "--workers", "0", "--unit-size", "1"]
    run_ingest(["s3://kill/src"], "s3://kill/ingest-whole", workers=0, unit_size=1, progress=False)  # the reference
    slow = Proxy(server.port, put_delay=0.3)  # a slow link: the job is certainly mid-way at its second record
    try:
        proc = _start({**env, "AWS_ENDPOINT_URL": slow.url}, *ingest, "--out", "s3://kill/ingest")
        assert _kill_after_records(fs, proc, "kill/ingest", 2), "the ingest job finished before it was killed"
    finally:
        slow.close()
    fs.pipe_file("kill/ingest/units/u-stray.parquet", b"a unit a killed run uploaded, never recorded")
    client_upload = fs.call_s3("create_multipart_upload", Bucket="kill", Key="ingest/units/u-half.parquet")
    time.sleep(float(STALE_S) + 0.5)
    with pytest.raises(StorageError, match="--break-lock"):  # the resumes run here: no second start-up
        run_ingest(["s3://kill/src"], "s3://kill/ingest", workers=0, unit_size=1, progress=False)
    run_ingest(["s3://kill/src"], "s3://kill/ingest", workers=0, unit_size=1, progress=False, break_lock=True)
    assert "u-stray.parquet" not in str(fs.find("kill/ingest"))
    uploads = fs.call_s3("list_multipart_uploads", Bucket="kill", Prefix="ingest/").get("Uploads", [])
    assert client_upload["UploadId"] not in [upload["UploadId"] for upload in uploads]
    assert _objects(fs, "kill/ingest") == _objects(fs, "kill/ingest-whole")

    cache = ["cache", "--manifest", "s3://kill/ingest", "--vae", VAE, "--image-size", "32", "--shard-videos", "1",
             "--workers", "0"]
    slow = Proxy(server.port, put_delay=1.0)  # the first run's link is slow, so it still runs when the second starts
    try:
        first = _start({**env, "AWS_ENDPOINT_URL": slow.url}, *cache, "--out", "s3://kill/cache")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None and not fs.exists("kill/cache/.lock"):
            fs.invalidate_cache()
            time.sleep(0.02)
        second = _latte(env, *cache, "--out", "s3://kill/cache")
        assert "being written by another running job" in one_error_line(second, 2, "s3://kill/cache")
        assert _kill_after_records(fs, first, "kill/cache", 2), "the cache job finished before it was killed"
    finally:
        slow.close()
    time.sleep(float(STALE_S) + 0.5)
    run_cache("s3://kill/ingest", VAE, "s3://kill/cache", image_size=32, shard_videos=1, workers=0, progress=False,
              break_lock=True)
    run_cache("s3://kill/ingest", VAE, "s3://kill/cache-whole", image_size=32, shard_videos=1, workers=0,
              progress=False)
    resumed, whole = _objects(fs, "kill/cache"), _objects(fs, "kill/cache-whole")
    assert len([key for key in whole if key.startswith("shards/")]) >= 6
    assert resumed == whole


@pytest.mark.slow
def test_an_outage_mid_upload_stops_the_job_naming_the_url_and_the_resume_completes(server, env, videos, tmp_path):
    """The job reaches the store through a proxy the test cuts after the first records: one Error line naming
    the URL; with the connection back (and the lock the failed run could not delete taken over once stale)
    the resume completes with the bytes of an uninterrupted run."""
    fs = _bucket(server, "outage")
    proxy = Proxy(server.port, cut_after_puts=9)  # the probe's 2, the lock, ingest.json, then mid-units
    try:
        config = tmp_path / "fast.yaml"  # one attempt per request, short timeouts: the outage shows at once
        config.write_text(yaml.safe_dump({"storage_options": {"config_kwargs": {
            "retries": {"max_attempts": 1}, "connect_timeout": 2, "read_timeout": 5}}}))
        through = {**env, **{"AWS_ENDPOINT_URL": proxy.url}}
        ingest = ["ingest", "-c", str(config), "--source", str(videos), "--workers", "0", "--unit-size", "1"]
        proc = _latte(through, *ingest, "--out", "s3://outage/ingest")
        one_error_line(proc, 2, "s3://outage/ingest")
        assert "testing-secret" not in proc.stderr
        fs.invalidate_cache()
        assert fs.find("outage/ingest/ledger") and not fs.exists("outage/ingest/manifest.parquet")
        proxy.restore()
        time.sleep(float(STALE_S) + 0.5)
        resumed = _latte(through, *ingest, "--out", "s3://outage/ingest", "--break-lock")
        assert resumed.returncode == 0, resumed.stderr
        run_ingest([str(videos)], "s3://outage/whole", workers=0, unit_size=1, progress=False)  # here, direct
        assert _objects(fs, "outage/ingest") == _objects(fs, "outage/whole")
    finally:
        proxy.close()


def test_a_store_that_ignores_conditional_writes_cannot_lock_a_job(server, env, videos):
    """Behind a proxy that drops If-None-Match, the second conditional PUT of the probe is not refused (no
    412): one Error naming the store, and nothing of the job written."""
    fs = _bucket(server, "nolock")
    proxy = Proxy(server.port, strip_if_none_match=True)
    try:
        proc = _latte({**env, "AWS_ENDPOINT_URL": proxy.url}, "ingest", "--source", str(videos), "--workers", "0",
                      "--out", "s3://nolock/ingest")
        assert "If-None-Match" in one_error_line(proc, 2, "s3://nolock/ingest")
        assert proxy.stripped >= 2
        assert [path for path in fs.find("nolock") if not path.endswith("ingest.json")] == []
    finally:
        proxy.close()


def test_bad_stores_are_one_error_naming_the_url(server, env, videos, tmp_path):
    """A missing bucket, a scheme no fsspec driver knows, and (on a server that checks keys) credentials it
    never issued: each one Error line naming the URL, exit 2, and never the secret."""
    _bucket(server, "present")
    proc = _latte(env, "ingest", "--source", str(videos), "--out", "s3://no-such-bucket/ingest")
    assert "not found" in one_error_line(proc, 2, "s3://no-such-bucket/ingest")
    proc = _latte(env, "ingest", "--source", str(videos), "--out", "nodriver://bucket/ingest")
    assert "no fsspec driver" in one_error_line(proc, 2, "nodriver://bucket/ingest")
    proc = _latte(env, "ingest", "--source", "s3://no-such-bucket/videos", "--out", str(tmp_path / "out"))
    one_error_line(proc, 2, "s3://no-such-bucket/videos")
    assert not (tmp_path / "out").exists()
    checking = S3Server(str(tmp_path), auth=True)
    try:
        proc = _latte({**env, **checking.env(), "AWS_SECRET_ACCESS_KEY": SECRET}, "ingest", "--source", str(videos),
                      "--out", "s3://present/ingest")
        assert "access denied" in one_error_line(proc, 2, "s3://present/ingest")
        assert SECRET not in proc.stderr and SECRET not in proc.stdout
    finally:
        checking.stop()


def test_the_streaming_loader_reads_the_batches_of_a_local_copy_within_its_cache_limit(server, env, videos, tmp_path):
    """A loader of an s3 cache (6 shards) through a local cache of 3 shards (shuffle_window 2 + prefetch 1):
    two epochs give the batches of a loader of a whole local copy, bit for bit; it never holds more than its
    limit, so shards are fetched again in the second epoch; a loader restored mid-epoch from a fresh scratch
    goes on with the uninterrupted batches; rank 1 of 2 reads its local slice; images are refused; a limit below window + prefetch shards is an error naming it."""
    from latte_toolkit.datasets.loader import CacheLoader
    from latte_toolkit.datasets.storage import stream_cache

    _bucket(server, "stream")
    run_ingest([str(videos)], "s3://stream/ingest", workers=0, progress=False)
    run_cache("s3://stream/ingest", VAE, "s3://stream/cache", image_size=32, shard_videos=1, workers=0,
              progress=False)
    settings = dict(batch_size=2, num_frames=4, sample_stride=1, clips_per_video=2, seed=3, shuffle_window=2)
    whole = CacheLoader(local_cache("s3://stream/cache"), **settings)
    largest = max(record["bytes"] for record in read_ledger(whole.folder))
    limit_gb = 3.5 * largest / (1 << 30)
    folder, stream = stream_cache("s3://stream/cache", None, 0, limit_gb, 1, 2)
    streamed = CacheLoader(folder, stream=stream, **settings)
    for epoch in range(2):
        expected, got = list(whole), list(streamed)
        assert len(got) == len(expected) == whole.batches_per_epoch > 0
        for a, b in zip(expected, got):
            for column in a:
                np.testing.assert_array_equal(np.asarray(b[column]), np.asarray(a[column]), err_msg=column)
    assert stream.peak <= limit_gb * (1 << 30) and stream.fetched > 6  # evicted, fetched again

    whole.load_state_dict({**whole.state_dict(), "epoch": 5, "position": 4})
    expected = list(whole)
    restored_env = tmp_path / "other-scratch"
    os.environ["LATTE_SCRATCH"] = str(restored_env)  # the env fixture's monkeypatch restores it
    folder, stream = stream_cache("s3://stream/cache", None, 0, limit_gb, 1, 2)
    resumed = CacheLoader(folder, stream=stream, **settings)
    resumed.load_state_dict({**resumed.state_dict(), "epoch": 5, "position": 4})
    got = list(resumed)
    assert len(got) == len(expected)
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(np.asarray(b["latent"]), np.asarray(a["latent"]))
    ranked = dict(settings, batch_size=1, rank=1, world_size=2)  # rank 1 of 2: its slice, as locally
    folder, stream = stream_cache("s3://stream/cache", None, 1, limit_gb, 1, 2)
    expected, got = list(CacheLoader(whole.folder, **ranked)), list(CacheLoader(folder, stream=stream, **ranked))
    assert len(got) == len(expected) > 0
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(np.asarray(b["latent"]), np.asarray(a["latent"]))
    with pytest.raises(UserError, match="use_image_num"):  # its images would read the whole cache
        CacheLoader(folder, stream=stream, use_image_num=1, **ranked)
    with pytest.raises(StorageError, match="cache_limit_gb"):
        stream_cache("s3://stream/cache", None, 0, 2.5 * largest / (1 << 30), 1, 2)


def test_a_cut_connections_unawaited_body_writer_is_not_logged_but_other_loop_errors_are(caplog):
    """What made the outage test flaky: asyncio logged aiohttp's failed body writer (a task nobody awaits) with a
    traceback beside the job's one Error line. fsspec's loop drops exactly that kind; any other error is logged."""
    import asyncio

    import aiohttp

    from latte_toolkit.datasets.storage import _quiet_lost_connections
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level("ERROR", logger="asyncio"):
            _quiet_lost_connections(loop, {"message": "Task exception was never retrieved",
                                           "exception": aiohttp.client_exceptions.ClientConnectionResetError("cut")})
            assert caplog.records == []
            _quiet_lost_connections(loop, {"message": "Task exception was never retrieved",
                                           "exception": ValueError("a bug")})
            assert len(caplog.records) == 1 and "a bug" in caplog.text
    finally:
        loop.close()
