"""Run map steps as Ray tasks: the same ``map`` as :class:`~clipsift.executor.LocalExecutor`, on one
machine or a Ray cluster.

Results come back in input order with a bounded number of tasks in flight, so the driver's memory
does not grow with the pool. A task whose worker dies is retried by Ray (``max_retries``); an
error the task raised itself (a :class:`~clipsift.errors.ClipsiftError`) is not retried and reaches
the user as its one line. The function is put in Ray's object store once per ``map``, not pickled
into every task.

Every step runs as tasks, ``threads=True`` ones included (for the local executor that flag picks
threads over processes; no step hands driver-owned objects to its tasks). Every node must see the
pool and the run folder at the same URL (shared storage), and have clipsift installed.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from functools import partial

from clipsift.errors import ClipsiftError, MissingDependencyError
from clipsift.executor import in_order
from clipsift.log import get_logger, progress

log = get_logger("ray")

_REMOTE = {}
TASKS_PER_WORKER = 16  # map tasks per worker at least, for an even finish
MAX_SHARDS_PER_TASK = 64


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError(
            "--executor ray needs Ray; install it with pip install 'clipsift[ray]' (or pip install ray)"
        ) from exc
    return ray


def _call(fn, item):
    """The Ray task body: ``fn`` arrives resolved from the object store."""
    return fn(item)


class RayExecutor:
    """Run ``fn`` over items as Ray tasks.

    ``address``: an existing cluster (``auto``, ``ray://host:10001`` or ``host:6379``); None uses
    ``RAY_ADDRESS`` when set, else starts a new Ray instance here with ``workers`` CPUs (default:
    this machine's), never joining another cluster by accident. ``workers`` is the number
    of tasks that run at once: the cluster's CPUs unless given.
    """

    kind = "ray"

    def __init__(
        self, address: str | None = None, workers: int | None = None, show_progress: bool = True,
        max_retries: int = 3, init_kwargs: dict | None = None,
    ):
        ray = _import_ray()
        self.address = address
        self.show_progress = show_progress
        self.max_retries = int(max_retries)
        if not ray.is_initialized():
            kwargs = dict(init_kwargs or {})
            kwargs.setdefault("log_to_driver", False)
            if address is None:
                kwargs.setdefault("include_dashboard", False)
            kwargs.setdefault("configure_logging", False)
            # no address: RAY_ADDRESS when the user set it, else a new instance here ("local"), never
            # whatever cluster happens to be running on this machine
            target = address or os.environ.get("RAY_ADDRESS") or "local"
            if target == "local" and workers is not None:
                kwargs.setdefault("num_cpus", int(workers))
            try:
                ray.init(address=target, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = address or "a local instance"
                raise ClipsiftError(f"ray: cannot start or reach {where} ({exc}); check --ray-address") from exc
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = max(1, int(workers) if workers is not None else cpus)

    def shards_per_task(self, num_shards: int) -> int:
        """Shards one map task covers: about ``TASKS_PER_WORKER`` tasks per worker, at most
        ``MAX_SHARDS_PER_TASK`` shards each. The driver spends a few ms of CPU per task (submit,
        wait, deserialise: 2.6 ms measured), which one task per shard would make the bottleneck
        at DataComp's 1.28M shards (docs/execution.md, projection)."""
        return max(1, min(MAX_SHARDS_PER_TASK, num_shards // (TASKS_PER_WORKER * self.workers)))

    def __getstate__(self):  # an executor never travels into tasks
        raise TypeError("RayExecutor is not picklable: tasks must not carry their executor")

    def map(
        self, fn: Callable, items: Iterable, *, desc: str = "", unit: str = "shard", total: int | None = None,
        threads: bool = False, resources: dict | None = None,
    ) -> Iterator:
        """Yield ``fn(item)`` in input order. ``resources``: Ray task options such as
        ``{"num_cpus": 1, "num_gpus": 1, "memory": bytes}`` (default one CPU per task)."""
        items = list(items)
        ray = _import_ray()
        opts = {"num_cpus": 1, "max_retries": self.max_retries, **(resources or {})}
        key = tuple(sorted(opts.items()))
        if key not in _REMOTE:
            _REMOTE[key] = ray.remote(**opts)(_call)
        remote = _REMOTE[key]
        bar = progress(total=total or len(items), desc=desc, unit=unit, disable=not self.show_progress)
        fn_ref = ray.put(fn)
        pending: deque = deque()
        try:
            submit = lambda item: remote.remote(fn_ref, item)  # noqa: E731
            for result in in_order(submit, partial(_get, ray), items, 2 * self.workers, pending):
                bar.update(1)
                yield result
        finally:
            for ref in pending:  # a failed or abandoned map cancels what is still queued
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001 - already finished or gone
                    pass
            bar.close()

    def share(self, array):
        """A handle that tasks resolve to ``array`` (Ray's object store: one copy per node)."""
        return _RayShared(_import_ray().put(array))


class _RayShared:
    def __init__(self, ref):
        self.ref = ref

    def get(self):
        return _import_ray().get(self.ref)


def _get(ray, ref):
    """``ray.get`` that gives back the task's own ClipsiftError (one line for the user)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, ClipsiftError | KeyboardInterrupt):
            raise cause from None
        if isinstance(cause, BaseException):
            raise cause from exc
        raise
