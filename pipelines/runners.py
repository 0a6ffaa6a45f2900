"""Map a unit function over unit specs: in this process, on local dask worker processes, or on an
existing dask cluster. The runner is a detail; each unit returns a result record the caller commits."""
import logging
import numbers
import queue
import threading

import dask
from dask.distributed import Client, LocalCluster, as_completed
from tqdm.auto import tqdm

from latte_core.errors import UserError

logger = logging.getLogger(__name__)


def check_workers(workers, error=UserError):
    """Raise `error` naming --workers unless it is a whole number >= 0 (a negative count would start a
    dask scheduler with no worker, and the job would wait for one forever)."""
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 0:
        raise error(f"--workers must be 0 (run in this process) or a positive number of worker processes, "
                    f"got {workers!r}")


def run_units(work, specs, on_result, workers=1, scheduler=None, stop_on=()):
    """Run work(spec) for every spec and call on_result(spec, result) in this process as each
    finishes. A unit that raises is logged and reported as on_result(spec, None), except for the
    exception types in `stop_on`, which cancel the remaining units and propagate. workers=0 runs
    in-process; workers>=1 starts a dask LocalCluster of that many single-threaded processes;
    `scheduler` ("tcp://host:port") uses an existing cluster instead; workers < 0 is a UserError."""
    check_workers(workers)
    if not specs:
        return
    if scheduler is None and workers == 0:
        for spec in specs:
            on_result(spec, _guarded(work, spec, stop_on))
        return

    with dask.config.set({"distributed.worker.daemon": False}):
        if scheduler is not None:
            cluster, client = None, Client(scheduler)
        else:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=logging.ERROR)
            client = Client(cluster)
    try:
        futures = {client.submit(work, spec, pure=False): spec for spec in specs}
        for future in as_completed(futures):
            spec = futures[future]
            try:
                result = future.result()
            except stop_on:
                client.cancel(list(futures))
                raise
            except Exception as err:
                logger.error("unit %s failed: %r", spec.get("unit_id"), err)
                result = None
            on_result(spec, result)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _guarded(work, spec, stop_on):
    try:
        return work(spec)
    except stop_on:
        raise
    except Exception as err:
        logger.error("unit %s failed: %r", spec.get("unit_id"), err)
        return None


def run_and_commit(work, specs, ledger, weight, desc, unit, workers=1, scheduler=None, progress=True, stop_on=()):
    """run_units with the commit every stage does: append each result to the ledger as it arrives and
    advance a progress bar by weight(spec) ({unit}s). Returns the ids of units that raised."""
    bar = tqdm(total=sum(weight(spec) for spec in specs), unit=unit, desc=desc, disable=not progress)
    errors = []

    def commit(spec, result):
        if result is None:
            errors.append(spec["unit_id"])
        else:
            ledger.append(result)
        bar.update(weight(spec))

    try:
        run_units(work, specs, commit, workers, scheduler, stop_on)
    finally:
        bar.close()
    return errors


class _Raised:
    def __init__(self, error):
        self.error = error


def prefetch(items, depth):
    """Yield `items` (an iterator) as a thread produces them, up to `depth` ahead: a unit's decoding on one
    core while it analyses on the other. An exception of `items` is raised here, where its item would
    have come; closing the generator stops the thread."""
    out, stop, done = queue.Queue(maxsize=depth), threading.Event(), object()

    def put(value):
        while not stop.is_set():
            try:
                out.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as err:  # handed to the consumer, raised there
            put(_Raised(err))

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is done:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()
