"""The autoscaler: grows a pool while its backlog stays high, shrinks it while it idles.

:class:`ScaleDecider` is the pure rule (in the manner of Ray Serve's autoscaling): the
actors wanted are ``ceil(backlog / target_backlog_per_actor)``, bounded by ``min_actors``,
``max_actors`` and ``num_shards``; a change is made once that wish has held for
``upscale_delay_s`` (growing) or ``downscale_delay_s`` (shrinking).
:class:`Autoscaler` is the thread that reads the backlog and calls ``ShardPool.scale``.

Example:
    >>> from shardyard.config import AutoscaleConfig
    >>> cfg = AutoscaleConfig(min_actors=1, max_actors=4, target_backlog_per_actor=100,
    ...                       upscale_delay_s=1, downscale_delay_s=5)
    >>> d = ScaleDecider(cfg, num_shards=8)
    >>> d.decide(backlog=1000, current=1, now=0.0) is None  # wishes 4, since now
    True
    >>> d.decide(backlog=1000, current=1, now=1.5)
    4
    >>> d.decide(backlog=0, current=4, now=2.0), d.decide(backlog=0, current=4, now=7.5)
    (None, 1)
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from shardyard.config import AutoscaleConfig

if TYPE_CHECKING:
    from shardyard.scheduler.pool import ShardPool

__all__ = ["Autoscaler", "ScaleDecider"]

log = logging.getLogger(__name__)


class ScaleDecider:
    """When to scale a pool, and to how many actors (pure: time is passed in)."""

    def __init__(self, cfg: AutoscaleConfig, num_shards: int) -> None:
        self.cfg = cfg
        self.max_actors = min(cfg.max_actors, num_shards)
        self.min_actors = min(cfg.min_actors, self.max_actors)
        self._since: float | None = None  # when the wish for a change began
        self._direction = 0  # +1 grow, -1 shrink, 0 none

    def wanted(self, backlog: int) -> int:
        """The actors ``backlog`` asks for, within the bounds."""
        want = -(-backlog // self.cfg.target_backlog_per_actor)
        return max(self.min_actors, min(self.max_actors, want))

    def decide(self, backlog: int, current: int, now: float) -> int | None:
        """The size to scale to now, or ``None`` to stay."""
        want = self.wanted(backlog)
        direction = (want > current) - (want < current)
        if direction == 0:
            self._since, self._direction = None, 0
            return None
        if direction != self._direction or self._since is None:
            self._since, self._direction = now, direction
        delay = self.cfg.upscale_delay_s if direction > 0 else self.cfg.downscale_delay_s
        if now - self._since < delay:
            return None
        self._since, self._direction = None, 0
        return want


class Autoscaler:
    """A daemon thread that scales ``pool`` by :class:`ScaleDecider`'s rule.

    On a cluster it asks Ray's autoscaler for the CPUs of the actors it wants
    (``ray.autoscaler.sdk.request_resources``), so nodes are added where one runs, and
    lowers the request as the pool shrinks (to nothing when it closes). Ray keeps one such
    request per cluster: the latest call wins, so two autoscaling pools on one cluster
    overwrite each other's.
    """

    def __init__(self, pool: ShardPool, cfg: AutoscaleConfig, num_shards: int) -> None:
        # Weak: the thread must not keep a pool nobody uses alive (its finalizer closes it).
        self._pool = weakref.ref(pool)
        self._cpus = pool.config.num_cpus_per_actor or 1.0
        self._decider = ScaleDecider(cfg, num_shards)
        self._interval = cfg.interval_s
        self._stop = threading.Event()
        self._requested: int | None = None
        self._thread = threading.Thread(target=self._run, name="shardyard-autoscale", daemon=True)
        self.events: list[dict[str, Any]] = []  # {"time", "from", "to", "backlog"} per scale

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop deciding (a scale under way finishes first, or fails as the pool closes)."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)
        if self._requested is not None:
            self._request(0)  # withdraw: the cluster need not keep nodes for a closed pool

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            pool = self._pool()
            if pool is None:
                return  # the pool was collected (its finalizer released the actors)
            try:
                core = pool._core
                if core is None:
                    continue
                current = len(core.active())
                backlog = core.backlog()
                target = self._decider.decide(backlog, current, time.monotonic())
                if target is None or self._stop.is_set():
                    continue
                self._request(target)
                report = pool.scale(target)
                self.events.append(
                    {"time": time.time(), "from": current, "to": target, "backlog": backlog}
                )
                log.info(
                    "shardyard: autoscaled %d -> %d actors (backlog %d, %d shards moved)",
                    current,
                    target,
                    backlog,
                    len(report.moved_shards),
                )
            except Exception:
                if self._stop.is_set():
                    return
                log.warning("shardyard: autoscaling failed; trying again", exc_info=True)
                self._stop.wait(1.0)
            finally:
                del pool  # no strong reference while waiting

    def _request(self, actors: int) -> None:
        """Ask Ray's autoscaler (where one runs) for the resources of ``actors`` actors."""
        if self._requested == actors:
            return
        self._requested = actors
        cpus = self._cpus
        try:
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=[{"CPU": cpus}] * actors)
        except Exception:  # no autoscaler to ask (a local Ray): nothing to do
            log.debug("shardyard: request_resources was not taken", exc_info=True)
