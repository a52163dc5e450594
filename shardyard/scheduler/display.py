"""How pools and their statistics show: short reprs, HTML tables for Jupyter, pandas, plots.

Kept apart from the models in :mod:`~shardyard.scheduler.stats` (what is counted) and the
pool (how work runs): this module is only about looking at them.

Example:
    >>> from shardyard.scheduler.stats import ActorStats, PoolStats, ShardStats
    >>> s = PoolStats(
    ...     shards=[ShardStats(shard_id=i, actor=i % 2, items=10 * (i + 1), batches=1,
    ...                        queue_depth=0, errors=0) for i in range(4)],
    ...     actors=[ActorStats(actor=a, pid=None, node_id=None, shards=[a, a + 2],
    ...                        in_flight_calls=0, outstanding=0, items=0, restarts=0)
    ...             for a in range(2)])
    >>> summary(s)
    'PoolStats(2 actors, 4 shards, 100 items, 0 errors, skew 1.20 over actors, 1.60 over shards)'
    >>> "<table" in stats_html(s)
    True
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shardyard.scheduler.stats import PoolStats

__all__ = ["plot_load", "skew", "stats_frame", "stats_html", "summary"]

MAX_SHARD_ROWS = 32  # shards listed in the HTML table before it shows only the busiest


def skew(values: list[float]) -> float:
    """``max / mean`` of ``values`` (1.0 is perfectly even; 0 when there is no load)."""
    if not values:
        return 0.0
    mean = sum(values) / len(values)
    return max(values) / mean if mean > 0 else 0.0


def actor_items(stats: PoolStats) -> list[int]:
    """Items finished per actor, from its shards' counters."""
    by_shard = {s.shard_id: s.items for s in stats.shards}
    return [sum(by_shard.get(sid, 0) for sid in a.shards) for a in stats.actors]


def summary(stats: PoolStats) -> str:
    """One line: actors, shards, items, errors and load skew."""
    errors = sum(s.errors for s in stats.shards)
    failed = sum(1 for s in stats.shards if s.failed)
    restarts = sum(a.restarts for a in stats.actors)
    extra = (f", {restarts} restarts" if restarts else "") + (
        f", {failed} failed shards" if failed else ""
    )
    if _uses_memo(stats):
        extra += f", memo {stats.memo_hits} hits / {stats.memo_misses} misses"
        extra += f" / {stats.memo_uncached} uncached" if stats.memo_uncached else ""
    return (
        f"PoolStats({len(stats.actors)} actors, {len(stats.shards)} shards, "
        f"{stats.items} items, {errors} errors, "
        f"skew {skew([float(x) for x in actor_items(stats)]):.2f} over actors, "
        f"{skew([float(s.items) for s in stats.shards]):.2f} over shards{extra})"
    )


def _uses_memo(stats: PoolStats) -> bool:
    return any(s.memo_hits or s.memo_misses or s.memo_uncached for s in stats.shards)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f'<table class="shardyard"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def stats_html(stats: PoolStats, title: str = "") -> str:
    """Actors, nodes, shards, load and errors as HTML tables (Jupyter's rich display)."""
    per_actor = actor_items(stats)
    nodes = sorted({a.node_ip or a.node_id or "?" for a in stats.actors})
    busy = {s.shard_id: s.busy_s for s in stats.shards}
    actor_rows = [
        [
            a.actor,
            a.pid if a.pid is not None else "-",
            a.node_ip or (a.node_id or "-")[:12],
            len(a.shards),
            items,
            f"{sum(busy.get(sid, 0.0) for sid in a.shards):.2f}",
            a.outstanding,
            a.restarts,
            a.state,
        ]
        for a, items in zip(stats.actors, per_actor, strict=True)
    ]
    shards = stats.shards
    memo = _uses_memo(stats)
    note = ""
    if len(shards) > MAX_SHARD_ROWS:
        note = f"the {MAX_SHARD_ROWS} busiest of {len(shards)} shards"
        shards = sorted(shards, key=lambda s: (-s.items, s.shard_id))[:MAX_SHARD_ROWS]
    shard_rows = [
        [
            s.shard_id,
            s.actor,
            s.items,
            s.batches,
            s.queue_depth,
            s.errors,
            f"{s.busy_s:.2f}",
            s.generation,
            *([s.memo_hits, s.memo_misses] if memo else []),
            s.failed or "",
        ]
        for s in shards
    ]
    head = html.escape(title + summary(stats))
    return (
        f"<div><p><b>{head}</b><br>nodes: {html.escape(', '.join(nodes))}</p>"
        + _table(
            ["actor", "pid", "node", "shards", "items", "busy s", "queued", "restarts", "state"],
            actor_rows,
        )
        + (f"<p>{html.escape(note)}</p>" if note else "")
        + _table(
            [
                "shard",
                "actor",
                "items",
                "batches",
                "queued",
                "errors",
                "busy s",
                "generation",
                *(["memo hits", "memo misses"] if memo else []),
                "failed",
            ],
            shard_rows,
        )
        + "</div>"
    )


def stats_frame(stats: PoolStats, of: str = "shards") -> Any:
    """A pandas DataFrame with one row per shard (``of="shards"``) or actor (``"actors"``).

    Raises:
        ImportError: pandas is not installed (``pip install 'shardyard[notebook]'``).
        ValueError: ``of`` is neither.
    """
    try:
        import pandas as pd
    except ImportError as exc:
        raise ImportError(
            "PoolStats.to_pandas needs pandas: pip install 'shardyard[notebook]'"
        ) from exc
    if of == "shards":
        return pd.DataFrame([s.model_dump() for s in stats.shards]).set_index("shard_id")
    if of == "actors":
        rows = []
        for a, items in zip(stats.actors, actor_items(stats), strict=True):
            row = a.model_dump()
            row["shards"] = len(a.shards)
            row["shard_items"] = items
            rows.append(row)
        return pd.DataFrame(rows).set_index("actor")
    raise ValueError(f"of must be 'shards' or 'actors', got {of!r}")


def plot_load(stats: PoolStats, metric: str = "items") -> Any:
    """A matplotlib Figure: ``metric`` per shard (coloured by actor) and per actor.

    A dashed line marks the mean on each panel; the titles give the skew (max / mean),
    so an uneven key distribution or placement shows at a glance.

    Raises:
        ImportError: matplotlib is not installed (``pip install 'shardyard[notebook]'``).
        ValueError: ``metric`` is not ``"items"``, ``"busy_s"`` or ``"errors"``.
    """
    if metric not in ("items", "busy_s", "errors"):
        raise ValueError(f"metric must be 'items', 'busy_s' or 'errors', got {metric!r}")
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "PoolStats.plot needs matplotlib: pip install 'shardyard[notebook]'"
        ) from exc
    shard_values = [float(getattr(s, metric)) for s in stats.shards]
    by_shard = dict(zip((s.shard_id for s in stats.shards), shard_values, strict=True))
    actor_values = [sum(by_shard.get(sid, 0.0) for sid in a.shards) for a in stats.actors]
    fig = Figure(figsize=(10, 3.2), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[3, 1])
    palette = [f"C{i % 10}" for i in range(max(1, len(stats.actors)))]
    index = {a.actor: i for i, a in enumerate(stats.actors)}
    colours = [palette[index.get(s.actor, 0) % len(palette)] for s in stats.shards]
    ids = [s.shard_id for s in stats.shards]
    if len(ids) <= 256:
        left.bar(ids, shard_values, color=colours, width=1.0)
    else:  # thousands of bars draw slowly: one line collection instead
        left.vlines(ids, 0, shard_values, colors=colours, linewidth=1)
    right.bar([str(a.actor) for a in stats.actors], actor_values, color=palette)
    for ax, values in ((left, shard_values), (right, actor_values)):
        if values:
            ax.axhline(sum(values) / len(values), color="black", linestyle="--", linewidth=1)
    label = {"items": "items", "busy_s": "busy seconds", "errors": "errors"}[metric]
    left.set_title(f"{label} per shard (colour: actor), skew {skew(shard_values):.2f}")
    left.set_xlabel("shard")
    left.set_ylabel(label)
    right.set_title(f"per actor, skew {skew(actor_values):.2f}")
    right.set_xlabel("actor")
    return fig
