"""The ledger (append, torn tail, damaged lines, records), the job folder and the one planning function."""
import json

import pytest

from latte_core.errors import UserError
from latte_toolkit.pipelines.jobs import Job, open_job_folder, plan_units
from latte_toolkit.pipelines.ledger import Ledger


def test_appended_records_come_back_in_commit_order(tmp_path):
    ledger = Ledger(tmp_path)
    assert ledger.records() == []
    records = [{"unit_id": f"u-{i}", "bytes": i, "sha256": "ab" * 32} for i in range(3)]
    for record in records:
        ledger.append(record)
    assert Ledger(tmp_path).records() == records
    lines = (tmp_path / "ledger.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == records and all(line.startswith("{") for line in lines)


def test_a_torn_last_line_is_ignored_by_readers_and_cut_by_the_next_writer(tmp_path):
    Ledger(tmp_path).append({"unit_id": "u-1"})
    path = tmp_path / "ledger.jsonl"
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"unit_id": "u-2", "by')  # a kill in the middle of an append
    from latte_toolkit.datasets.cache import read_ledger
    assert read_ledger(tmp_path) == [{"unit_id": "u-1"}] and path.read_bytes().endswith(b'"by')  # read-only
    ledger = Ledger(tmp_path)
    assert path.read_bytes() == whole
    ledger.append({"unit_id": "u-2"})
    assert [r["unit_id"] for r in ledger.records()] == ["u-1", "u-2"]


@pytest.mark.parametrize("line, reason", [(b"not json", "is not valid JSON"),
                                          (b'{"bytes": 3}', "is not a unit record"),
                                          (b'{"unit_id": "\xff"}', r"is not valid JSON \(not UTF-8 text\)")])
def test_a_finished_line_that_is_not_a_record_is_an_error_naming_the_file_and_line(tmp_path, line, reason):
    Ledger(tmp_path).append({"unit_id": "u-1"})
    with open(tmp_path / "ledger.jsonl", "ab") as handle:
        handle.write(line + b"\n")
    with pytest.raises(UserError, match=rf"ledger.jsonl: line 2 {reason}.*delete that line to redo its unit"):
        Ledger(tmp_path).records()


def test_plan_units_names_units_by_their_members_only():
    items = [{"video_id": f"v{i}"} for i in range(5)]
    key = lambda item: [item["video_id"]]  # noqa: E731
    pending, done = plan_units(items, 2, key, "u", "inputs")
    assert done == 0 and [len(unit["inputs"]) for unit in pending] == [2, 2, 1]
    assert all(unit["unit_id"].startswith("u-") and len(unit["unit_id"]) == 18 for unit in pending)
    again, done = plan_units(items, 2, key, "u", "inputs", {pending[1]["unit_id"]})
    assert done == 1 and [u["unit_id"] for u in again] == [pending[0]["unit_id"], pending[2]["unit_id"]]
    other, _ = plan_units(items[:4] + [{"video_id": "w"}], 2, key, "u", "inputs")
    assert [u["unit_id"] for u in other][:2] == [u["unit_id"] for u in pending][:2] != [u["unit_id"] for u in other]


def test_a_job_folder_is_created_resumed_or_refused(tmp_path):
    out = tmp_path / "job"
    open_job_folder(out, "stage.json", {"a": 1, "b": 2}, "units")
    assert json.loads((out / "stage.json").read_text()) == {"a": 1, "b": 2} and (out / "units").is_dir()
    open_job_folder(out, "stage.json", {"a": 1, "b": 2}, "units")  # the same settings: resumed
    with pytest.raises(UserError, match=r"other settings \(b differ\)"):
        open_job_folder(out, "stage.json", {"a": 1, "b": 3}, "units", UserError)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(UserError, match="is not empty and holds no stage.json"):
        open_job_folder(tmp_path / "full", "stage.json", {}, "units", UserError)


def test_a_job_cleans_staging_and_holds_the_lock(tmp_path):
    out = tmp_path / "job"
    open_job_folder(out, "stage.json", {}, "units")
    (out / "units" / ".staging-abc-u-1.parquet").write_text("half")
    (out / ".staging-def-manifest.parquet").mkdir()
    with Job(out, "stage.json", {}, "units", UserError) as job:
        assert sorted(p.name for p in out.rglob(".staging-*")) == []
        with pytest.raises(UserError, match="is being written by another running job"):
            with Job(out, "stage.json", {}, "units", UserError):
                pass
        job.ledger.append({"unit_id": "u-1"})
        assert job.records() == [{"unit_id": "u-1"}]
        assert job.publish(lambda: "published", "writing") == "published"
    with Job(out, "stage.json", {}, "units", UserError):  # released
        pass
