"""The runners: in this process and on a dask LocalCluster, the same results; failures reported."""
import pytest

from latte_core.errors import DiskFull
from latte_toolkit.pipelines.ledger import Ledger
from latte_toolkit.pipelines.runners import run_and_commit, run_units


def square(spec):
    if spec["n"] == 3:
        raise ValueError("three is bad")
    return {"unit_id": spec["unit_id"], "square": spec["n"] ** 2}


def full_disk_at_one(spec):
    if spec["n"] == 1:
        raise DiskFull("no space left")
    return {"unit_id": spec["unit_id"]}


SPECS = [{"unit_id": f"u-{n}", "n": n} for n in range(5)]


@pytest.mark.parametrize("workers", [0, 2])
def test_every_unit_reports_once_and_a_unit_that_raises_reports_none(workers):
    results = {}
    run_units(square, SPECS, lambda spec, result: results.setdefault(spec["unit_id"], result), workers=workers)
    assert results == {f"u-{n}": (None if n == 3 else {"unit_id": f"u-{n}", "square": n * n}) for n in range(5)}


def test_run_and_commit_ledgers_results_in_process_and_on_dask_alike(tmp_path):
    ledgers = {}
    for workers in (0, 1):
        (tmp_path / str(workers)).mkdir()
        ledger = Ledger(tmp_path / str(workers))
        errors = run_and_commit(square, SPECS, ledger, lambda spec: 1, "test", "unit", workers=workers, progress=False)
        assert errors == ["u-3"]
        ledgers[workers] = sorted(ledger.records(), key=lambda record: record["unit_id"])
    assert ledgers[0] == ledgers[1] and len(ledgers[0]) == 4


@pytest.mark.parametrize("workers", [0, 1])
def test_a_stop_on_exception_cancels_the_rest_and_propagates(workers):
    seen = []
    with pytest.raises(DiskFull, match="no space left"):
        run_units(full_disk_at_one, SPECS, lambda spec, result: seen.append(spec["n"]), workers=workers,
                  stop_on=DiskFull)
    if workers == 0:  # in process, units run in order: the first one only
        assert seen == [0]
    assert 1 not in seen and len(seen) < len(SPECS)


def test_no_specs_starts_nothing():
    run_units(square, [], lambda spec, result: pytest.fail("called"), workers=2)
