"""Redis: bucketed counters, idempotent flushes, window reads, history, events.

Key layout (``P`` is ``{key_prefix}``: braces make it a Redis Cluster hash tag, so
one namespace lives in one slot and the flush script may touch all of it):

=============================  ======  =============================================
key                            type    content
=============================  ======  =============================================
``P:b:<bucket_s>:<start>:n``   hash    ``messages`` -> messages in the bucket
``P:b:<bucket_s>:<start>:t``   hash    topic -> messages
``P:b:<bucket_s>:<start>:c``   hash    category -> messages
``P:b:<bucket_s>:<start>:u``   hash    username -> messages
``P:b:<bucket_s>:<start>:uc``  hash    ``username\\x1fcategory`` -> messages
``P:ids:<hour>:<shard>``       set     :func:`id_hash` of the msg_ids seen with a
                                       timestamp in that hour (a msg_id is looked
                                       up in its hour and the two neighbours, so a
                                       re-sent message whose timestamp moved by
                                       < 1 h is still caught); kept ``dedupe_s``
                                       (default: the longest window + 1 h)
``P:batch:<uuid>``             string  a flush already applied (idempotent retry)
``P:hist:<window_s>``          list    JSON ``[end, longtail, longtail_normalized,
                                       gini, messages, users]``, oldest first
``P:state``                    string  the listener's latest ``tick`` event (JSON)
``P:recent``                   list    the latest ``blink`` entries (JSON), newest last
``P:meta``                     hash    ``epoch``, ``last_message_at``, listener health,
                                       ``backfill_status`` (``running``, ``done``,
                                       ``incomplete``), ``backfill_last`` (JSON),
                                       ``backfill_resume_from``, ``backfill_*_at``
``P:events``                   pubsub  channel of ``blink`` and ``tick`` events
                               (``P:events:dbN`` on database N > 0: channels are server-wide)
=============================  ======  =============================================

Bucket keys expire at ``start + bucket_s + retention`` (``EXPIREAT``), where the
retention of a bucket size is the longest window read from it (the coarsest keeps
``retention_s``): keys go when no window needs them.

All counter writes go through one Lua script per flush (:data:`FLUSH_LUA`): it
checks the flush's batch id (a retried flush changes nothing and returns the
flags it recorded), de-duplicates every msg_id against its hour's id set and
both neighbours' (a duplicate is skipped; each set is asked once about the
batch's ids with ``SMISMEMBER`` and the new ids go in with one ``SADD``, in
chunks of 1,000, which costs Redis less CPU than one ``SISMEMBER`` and one ``SADD``
a message; the decisions are the same, message by message in
order, ``tests/storage/test_hotpath.py``), and adds the batch's increments, aggregated
per bucket and field on the Python side (:func:`aggregate`), with one ``HINCRBY``
per distinct field; the increments of the duplicates, if any, are taken out
first.  The script is atomic,
so a flush is counted entirely or not at all.  Keys whose expiry time has already
passed (a backfill older than a window's retention) are not written: ``EXPIREAT``
would delete them at once; an id set in that case is kept in a Lua table for the
script's duration instead (duplicates inside the batch are still caught).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Sequence
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis.asyncio as aioredis
from redis.asyncio import ConnectionPool
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import AuthenticationError

from listener.core.counting import Counted, aggregate
from listener.core.errors import ConfigError, TransientError
from listener.core.windows import UC_SEP, Counts, choose_bucket, window_buckets

log = logging.getLogger(__name__)

#: The flush script (``flush.lua`` beside this module, package data).
FLUSH_LUA = (resources.files("listener.storage") / "flush.lua").read_text(encoding="utf-8")


#: The writer's claim on a namespace (``P:writer``): set to ``ARGV[1]`` for
#: ``ARGV[2]`` ms when free, already ours, or held by ``ARGV[3]`` (a holder known to
#: be gone); returns nothing then, else the holder.
WRITER_LUA = r"""
local cur = redis.call('GET', KEYS[1])
if not cur or cur == ARGV[1] or (ARGV[3] ~= '' and cur == ARGV[3]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return false
end
return cur
"""


#: A step's writes (:meth:`Store.record_tick`), fenced: nothing is written unless
#: ``KEYS[1]`` (the writer lease) holds ``ARGV[1]`` ('' = not checked); returns 1
#: when written, 0 when fenced.  KEYS: lease, ``P:state``, then each window's history
#: list; ARGV: token, events channel, tick JSON, history length, then one point per
#: history list.
TICK_LUA = r"""
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 3, #KEYS do
  redis.call('RPUSH', KEYS[i], ARGV[i + 2])
  redis.call('LTRIM', KEYS[i], -tonumber(ARGV[4]), -1)
end
redis.call('SET', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""

#: A blink (:meth:`Store.publish_blink`), fenced as :data:`TICK_LUA`.  KEYS: lease,
#: ``P:recent``; ARGV: token, events channel, event JSON, ticker length, then the
#: ticker entries (JSON).
BLINK_LUA = r"""
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if #ARGV > 4 then
  for i = 5, #ARGV, 1000 do
    redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""

#: How often the number of replicas connected to the master is asked (``ROLE``)
#: when ``wait_replicas`` is automatic, seconds.
REPLICAS_CHECK_S = 5.0


class Fenced(TransientError):
    """A write refused because the writer does not hold the namespace's lease
    (``P:writer``) any more: another listener took over."""

    def __init__(self, holder: str) -> None:
        super().__init__(f"not the writer any more: the lease is held by {holder or 'nobody'}")
        self.holder = holder


class NotReplicated(TransientError):
    """A flush applied on the master but not confirmed by ``WAIT`` on enough
    replicas in time: retried with the same batch id."""


#: Replies of a reachable Redis to a connection's set-up (``SELECT``, ``AUTH``) that
#: retrying cannot change.
_CONFIG_REPLIES = ("DB index is out of range", "invalid password", "WRONGPASS", "NOAUTH")


#: Extra lifetime of the msg_id sets beyond the longest window, seconds: a backfill
#: of the whole window that runs for up to this long still finds every set.
DEDUPE_MARGIN_S = 3600


#: msg_id sets per hour: ``P:ids:<hour start>:<id_hash % ID_SHARDS>``.  Each set
#: then holds ~100 hashes at Fedora's rate (~6,000 messages an hour), under Redis's
#: ``set-max-intset-entries`` (512): Redis keeps it as an intset, ~10 bytes a
#: msg_id: 9.6 MiB for a week of 1,000,000 msg_ids, against 92 MiB for one set of
#: msg_id strings an hour (Redis 7.0, ``bench/dedupe_memory.py``).  A busier shard
#: becomes a hash table: bigger, as correct.
ID_SHARDS = 64


def id_hash(msg_id: str) -> int:
    """The 64-bit key a msg_id is de-duplicated by in Redis: the first 8 bytes of
    its BLAKE2b digest as a signed integer (Redis keeps such members as integers).

    Two different msg_ids collide with probability 2**-64 per pair; a flush checks
    an id against three hourly sets (~20,000 ids at Fedora's busiest rate), so the
    chance that a week's ~1,000,000 messages lose one to a collision is ~1e-9.
    Kept in :data:`ID_SHARDS` sets an hour, a week of them takes ~10x less Redis
    memory than the msg_id strings (``bench/dedupe_memory.py``, docs/BENCHMARKS.md).
    """
    digest = hashlib.blake2b(msg_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _is_config_reply(exc: BaseException) -> bool:
    """Whether a failed connection is Redis refusing the URL (wrong or missing
    password, a database it does not have), which no retry can change."""
    # redis-py strips the WRONGPASS/NOAUTH prefixes and raises AuthenticationError
    # ("invalid username-password pair", "Authentication required.")
    if isinstance(exc, AuthenticationError):
        return True
    text = str(exc)
    return any(r in text for r in _CONFIG_REPLIES)


def check_redis_url(url: str) -> None:
    """Check a Redis URL the way redis-py reads it, without connecting.

    Raises:
        ValueError: not a ``redis://``, ``rediss://`` or ``unix://`` URL (redis-py's
            own message), a database path that is not a number (redis-py would use
            database 0 in silence: ``redis://h/abc``), or a ``unix://`` URL with no
            socket path.
    """
    kwargs = ConnectionPool.from_url(url).connection_kwargs
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss"):
        db = parts.path.lstrip("/")
        if db and not (db.isascii() and db.isdigit()):
            raise ValueError(f"the database {db!r} is not a number")
    elif parts.scheme == "unix" and not kwargs.get("path"):
        raise ValueError("no socket path (unix:///run/redis/redis.sock)")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Store:
    """Async access to the wallboard's Redis namespace.

    Args:
        client: a ``redis.asyncio.Redis`` (``decode_responses=False``).
        prefix: the key prefix (without braces).
        buckets_s: bucket sizes kept, seconds.
        windows_s: windows read, seconds (bucket retention is derived from them).
        retention_s: lifetime of the coarsest buckets, seconds.
        dedupe_s: lifetime of msg_id sets beyond their hour, seconds; ``None``
            (default): the longest window + :data:`DEDUPE_MARGIN_S`, so a backfill
            or replay anywhere in the windows is de-duplicated.

    Redis errors propagate as ``redis.exceptions.RedisError`` (``ConnectionError``
    and ``TimeoutError`` are the transient ones).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = "fwb",
        buckets_s: Sequence[int] = (60, 3600),
        windows_s: Sequence[int] = (3600, 86400, 604800),
        retention_s: int = 14 * 86400,
        dedupe_s: int | None = None,
        wait_replicas: int = -1,
        wait_timeout_ms: int = 1000,
    ) -> None:
        self.r = client
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        #: ``(replicas connected to the master, monotonic time asked)``
        self._replicas: tuple[int, float] | None = None
        #: a master of this store has reported a connected replica
        self._had_replicas = False
        self.p = "{" + prefix + "}"
        self.buckets_s = tuple(sorted(buckets_s))
        self.windows_s = tuple(windows_s)
        self.dedupe_s = max(self.windows_s) + DEDUPE_MARGIN_S if not dedupe_s else int(dedupe_s)
        #: ``backfill_status`` of ``P:meta`` as last read by :meth:`check_epoch`
        self.backfill_status: str | None = None
        keep: dict[int, int] = {b: 0 for b in self.buckets_s}
        for w in self.windows_s:
            b = choose_bucket(w, self.buckets_s)
            keep[b] = max(keep[b], w)
        keep[self.buckets_s[-1]] = max(keep[self.buckets_s[-1]], retention_s)
        # A bucket size no window reads is still kept for the longest window.
        self.keep_s = {b: (k or max(self.windows_s)) for b, k in keep.items()}
        self._flush = self.r.register_script(FLUSH_LUA)
        self._claim = self.r.register_script(WRITER_LUA)
        self._tick = self.r.register_script(TICK_LUA)
        self._blink = self.r.register_script(BLINK_LUA)
        self._release = self.r.register_script(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end"
        )
        # pub/sub channels are server-wide, whatever database a client selected: two
        # wallboards on databases 1 and 3 of one server would see each other's ticks.
        # So a database other than 0 is part of the channel's name.
        pool = getattr(client, "connection_pool", None)
        db = int((getattr(pool, "connection_kwargs", None) or {}).get("db") or 0)
        self.events_channel = f"{self.p}:events" if db == 0 else f"{self.p}:events:db{db}"

    @classmethod
    def from_url(cls, url: str, timeout_s: float = 5.0, **kwargs: Any) -> Store:
        """Connect to ``url`` (any redis-py URL) with a bounded socket timeout.

        Raises:
            ValueError: not a URL redis-py takes, or one it would misread
                (:func:`check_redis_url`).
        """
        check_redis_url(url)
        client = aioredis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=30,
        )
        return cls(client, **kwargs)

    @classmethod
    def from_sentinels(
        cls,
        sentinels: Sequence[tuple[str, int]],
        master_name: str,
        timeout_s: float = 5.0,
        **kwargs: Any,
    ) -> Store:
        """The master ``master_name`` found through Redis Sentinel (redis-py's
        ``redis.asyncio.sentinel.Sentinel``): every new connection asks the sentinels
        where the master is, and a connection to a master demoted to a replica is
        dropped (redis-py's ``SentinelManagedConnection``).

        Args:
            sentinels: ``[(host, port), ...]``.
        """
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            sentinels,
            socket_timeout=timeout_s,
            sentinel_kwargs={"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s},
        )
        client = sentinel.master_for(
            master_name,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=30,
        )
        return cls(client, **kwargs)

    def oldest_starts(self, now: float, margin_s: int = 60) -> dict[int, int]:
        """Per bucket size, the oldest bucket start worth counting at ``now``.

        Older buckets' keys would expire as soon as written (``EXPIREAT start +
        bucket_s + retention`` in the past; no window reads them): a backfill of
        old messages skips them.  ``margin_s`` covers clock skew with Redis, which
        makes the same check by its own clock in :data:`FLUSH_LUA`.

        Args:
            now: UNIX seconds (the wall clock: Redis expires keys by it).
        """
        return {b: int(now) - margin_s - b - self.keep_s[b] + 1 for b in self.buckets_s}

    def key(self, *parts: object) -> str:
        """``P:part:part...``."""
        return ":".join([self.p, *map(str, parts)])

    async def close(self) -> None:
        """Close the connection pool."""
        await self.r.aclose()

    async def ping(self) -> bool:
        """True when Redis answers PING."""
        return bool(await self.r.ping())

    # -- writes ------------------------------------------------------------

    async def flush(
        self,
        batch: Sequence[Counted],
        batch_id: str | None = None,
        counts: dict[tuple[int, int], Counts] | None = None,
        lease: str | None = None,
    ) -> list[bool]:
        """Write a batch of messages atomically and idempotently.

        Args:
            batch: messages to count.
            batch_id: identifies this flush; a retry with the same id is a no-op.
                ``None`` makes a fresh one.
            counts: ``aggregate(batch, self.buckets_s)`` when the caller already
                has it (the consumer needs it for its windows); not modified.
            lease: the writer's lease token (:meth:`claim_writer`): the script
                refuses the batch unless ``P:writer`` holds it (fencing).  None: not
                checked (the ``backfill`` command).

        Raises:
            Fenced: ``lease`` is not the lease holder's; nothing was written.
            NotReplicated: applied, but ``WAIT`` did not confirm it on
                :meth:`replicas_wanted` replicas within ``wait_timeout_ms``.
            redis.exceptions.RedisError: Redis unreachable or failing.

        Returns:
            One flag per message: True if it was counted as new, False if its
            msg_id was already counted (a duplicate).  A retry of an applied batch
            id changes nothing and returns the flags recorded when it was applied.
        """
        if not batch:
            return []
        if counts is None:
            counts = aggregate(batch, self.buckets_s)
        cfg: dict[str, Any] = {
            "batch": batch_id or uuid.uuid4().hex,
            "batch_ttl": 86400,
            "ids_bucket": 3600,
            "ids_ttl": self.dedupe_s,
            "ids_shards": ID_SHARDS,
            "buckets": list(self.buckets_s),
        }
        if lease is not None:
            cfg["lease"] = lease
        p = self.p
        keep = self.keep_s
        aggs = [
            [
                f"{p}:b:{b}:{start}",
                start + b + keep[b],
                c.messages,
                c.topics,
                c.categories,
                c.users,
                {u + UC_SEP + cat: n for (u, cat), n in c.usercat.items()},
            ]
            for (b, start), c in counts.items()
        ]
        # columns (one JSON array per field), not one small array per message
        msg_ids, stamps, topics, categories, users = zip(*batch, strict=True)
        hashes = [id_hash(m) if m else 0 for m in msg_ids]
        ids = [str(h) if m else "" for h, m in zip(hashes, msg_ids, strict=True)]
        shards = [h % ID_SHARDS for h in hashes]
        keys = [self.key("meta")]
        args: list[bytes | str] = [
            p,
            orjson.dumps(cfg),
            orjson.dumps([ids, stamps, shards]),  # Counted.timestamp is an int already
            orjson.dumps(aggs),
            orjson.dumps([topics, categories, users]),
        ]
        wanted = await self.replicas_wanted()
        if wanted:
            # WAIT counts the replicas that have this connection's writes: the
            # script and WAIT go on one connection, in one round trip
            async with self.r.pipeline(transaction=False) as pipe:
                await self._flush(keys=keys, args=args, client=pipe)  # queued
                pipe.execute_command("WAIT", wanted, self.wait_timeout_ms)
                res, acked = await pipe.execute()
        else:
            res = await self._flush(keys=keys, args=args)
            acked = 0
        if res[0] == -2:  # fenced (flush.lua): the lease holder's token instead
            raise Fenced(_text(res[1]))
        if wanted and int(acked) < wanted:
            self._replicas = None  # ask again: a replica may have gone
            raise NotReplicated(
                f"flush confirmed by {acked} replica(s) of {wanted} within "
                f"{self.wait_timeout_ms} ms"
            )
        # ``[new count, flags]`` (``-1`` for a retry of an applied batch: the flags
        # it recorded), the flags one string of "1"/"0", one per message: one bulk
        # reply instead of an array of one integer per message
        recorded = res[1] if isinstance(res[1], bytes) else str(res[1]).encode()
        if len(recorded) != len(batch):
            raise RuntimeError(
                f"flush script returned {len(recorded)} flags for {len(batch)} messages"
            )
        if res[0] == len(batch):  # every message new: live traffic
            return [True] * len(batch)
        return [c == 49 for c in recorded]  # b"1"

    async def replicas_wanted(self) -> int:
        """How many replicas ``WAIT`` must confirm a flush on: ``wait_replicas``,
        or when it is -1 (automatic), 1 once a master of this store has reported a
        connected replica (``ROLE``, asked every :data:`REPLICAS_CHECK_S`), else 0.

        Once replicas were seen, a master without one (a new master whose replicas
        are still syncing after a failover, or one whose replicas died) holds the
        flushes, retried, until a replica confirms them: written there alone, they
        would be lost by the next failover.  A server that never had a replica is
        written without ``WAIT``."""
        if self.wait_replicas >= 0:
            return self.wait_replicas
        now = asyncio.get_running_loop().time()
        if self._replicas is None or now - self._replicas[1] > REPLICAS_CHECK_S:
            role = await self.r.execute_command("ROLE")  # type: ignore[no-untyped-call]
            connected = len(role[2]) if _text(role[0]) == "master" else 0
            self._replicas = (connected, now)
            self._had_replicas = self._had_replicas or connected > 0
        return 1 if self._had_replicas else 0

    async def ensure_epoch(self, now: float) -> tuple[str, bool]:
        """Return the namespace's epoch id, creating it if missing.

        Returns:
            ``(epoch, created)``: ``created`` is True when Redis had no epoch
            (a new or flushed Redis).
        """
        epoch, created, _ = await self.check_epoch(now)
        return epoch, created

    async def check_epoch(self, now: float) -> tuple[str, bool, str | None]:
        """:meth:`ensure_epoch` plus ``backfill_done_at`` of ``P:meta``, in one round
        trip: ``(epoch, created, backfill_done_at or None)``; ``backfill_status``
        (``running``, ``done``, ``incomplete`` or None) is kept in
        :attr:`backfill_status` on the way."""
        epoch = uuid.uuid4().hex
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.hsetnx(self.key("meta"), "epoch", epoch)
            pipe.hmget(self.key("meta"), ["epoch", "backfill_done_at", "backfill_status"])
            created, (got, done, status) = await pipe.execute()
        done_at = done.decode() if done else None
        self.backfill_status = status.decode() if status else None
        if created:
            await self.r.hset(self.key("meta"), "epoch_started_at", str(now))
            return epoch, True, done_at
        return (got.decode() if got else epoch), False, done_at

    async def append_history(self, window_s: int, point: list[Any], maxlen: int) -> None:
        """Append one history point to a window's bounded list."""
        k = self.key("hist", window_s)
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.rpush(k, orjson.dumps(point))
            pipe.ltrim(k, -maxlen, -1)
            await pipe.execute()

    async def record_tick(
        self,
        points: dict[int, list[Any]],
        maxlen: int,
        tick: dict[str, Any],
        lease: str | None = None,
    ) -> None:
        """What a step writes, in one script (:data:`TICK_LUA`, one round trip):
        each window's history point (as :meth:`append_history`), then the ``tick``
        stored (as :meth:`set_state`) and published (as :meth:`publish`), encoded
        once.

        Args:
            points: ``{window_s: point}``; maxlen: points kept per window.
            lease: the writer's lease token: nothing is written unless it holds the
                lease (None: not checked).

        Raises:
            Fenced: ``lease`` does not hold the lease.
        """
        data = orjson.dumps(tick)
        written = await self._tick(
            keys=[
                self.key("writer"),
                self.key("state"),
                *(self.key("hist", w) for w in points),
            ],
            args=[
                lease or "",
                self.events_channel,
                data,
                maxlen,
                *(orjson.dumps(point) for point in points.values()),
            ],
        )
        if not written:
            raise Fenced("another listener")

    async def history(self, window_s: int, limit: int = 2880) -> list[list[Any]]:
        """A window's longtail history: ``[[end, longtail, longtail_normalized, gini,
        messages, users], ...]``, oldest first, at most ``limit`` points."""
        raw = await self.r.lrange(self.key("hist", window_s), -limit, -1)
        return [orjson.loads(x) for x in raw]

    async def publish(self, event: dict[str, Any]) -> None:
        """Publish an event (``{"type": ...}``) on the events channel."""
        await self.r.publish(self.events_channel, orjson.dumps(event))

    async def set_state(self, event: dict[str, Any]) -> None:
        """Store the latest ``tick`` event (what new page clients start from)."""
        await self.r.set(self.key("state"), orjson.dumps(event))

    async def state(self) -> dict[str, Any] | None:
        """The latest ``tick`` event, or None."""
        raw = await self.r.get(self.key("state"))
        return orjson.loads(raw) if raw else None

    async def push_recent(self, entries: Sequence[dict[str, Any]], maxlen: int) -> None:
        """Append blink entries to the bounded ticker list."""
        if not entries:
            return
        async with self.r.pipeline(transaction=False) as pipe:
            self._queue_recent(pipe, entries, maxlen)
            await pipe.execute()

    def _queue_recent(self, pipe: Any, entries: Sequence[dict[str, Any]], maxlen: int) -> None:
        k = self.key("recent")
        pipe.rpush(k, *[orjson.dumps(e) for e in entries])
        pipe.ltrim(k, -maxlen, -1)

    async def publish_blink(
        self, event: dict[str, Any], maxlen: int, lease: str | None = None
    ) -> None:
        """Append a ``blink`` event's ``msgs`` to the ticker list (bounded to
        ``maxlen``) and publish the event: :meth:`push_recent` then :meth:`publish`,
        in that order, in one script (:data:`BLINK_LUA`, one round trip).

        Raises:
            Fenced: ``lease`` (None: not checked) does not hold the lease.
        """
        written = await self._blink(
            keys=[self.key("writer"), self.key("recent")],
            args=[
                lease or "",
                self.events_channel,
                orjson.dumps(event),
                maxlen,
                *(orjson.dumps(e) for e in event.get("msgs") or ()),
            ],
        )
        if not written:
            raise Fenced("another listener")

    async def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        """The latest blink entries, oldest first."""
        return [orjson.loads(x) for x in await self.r.lrange(self.key("recent"), -limit, -1)]

    async def claim_writer(self, me: str, ttl_s: float, gone: str = "") -> str | None:
        """Claim (or renew) the one-writer role of this namespace for ``ttl_s`` seconds.

        Two listeners counting into one namespace would each keep running totals
        of half the truth and publish disagreeing ticks (docs/ARCHITECTURE.md: one
        writer); the listener claims this lease and renews it
        (``listener.daemon.service._lease_loop``); its writes carry ``me`` and are
        refused once another token holds it (fencing: :data:`FLUSH_LUA`,
        :data:`TICK_LUA`, :data:`BLINK_LUA`).

        Args:
            me: this writer's lease token (random, then ``@host:pid`` for the logs).
            gone: a holder known to be gone: taken over.

        Returns:
            None when ``me`` holds the role now; else the holder's id.
        """
        held = await self._claim(keys=[self.key("writer")], args=[me, int(ttl_s * 1000), gone])
        if held is None:
            return None
        return held.decode() if isinstance(held, bytes) else str(held)

    async def release_writer(self, me: str) -> None:
        """Give the writer role up (a clean stop), if ``me`` still holds it."""
        await self._release(keys=[self.key("writer")], args=[me])

    async def set_health(self, fields: dict[str, Any]) -> None:
        """Record listener health fields in ``P:meta`` (strings/numbers)."""
        await self.r.hset(self.key("meta"), mapping={k: str(v) for k, v in fields.items()})

    async def convert_legacy_ids(self) -> int:
        """Move msg_id sets of the one-set-an-hour layout (``P:ids:<hour>``, msg_id
        strings) to the hashed, sharded one (``P:ids:<hour>:<shard>``, expiring as the
        flush script sets them: hour + 1 h + ``dedupe_s``), so ids counted before an
        upgrade still de-duplicate.

        Idempotent (a converted set is deleted); a few hundred thousand ids take
        about a second.  Returns the number of msg_ids moved.
        """
        moved = 0
        async for raw in self.r.scan_iter(match=self.key("ids", "*"), count=1000):
            key = _text(raw)
            hour = key.rsplit(":ids:", 1)[1]
            if not hour.isdigit():  # already <hour>:<shard>
                continue
            at = int(hour) + 3600 + self.dedupe_s
            members = await self.r.smembers(raw)
            shards: dict[int, list[int]] = {}
            for m in members:
                h = id_hash(_text(m))
                shards.setdefault(h % ID_SHARDS, []).append(h)
            pipe = self.r.pipeline(transaction=True)
            for shard, hashes in shards.items():
                dest = self.key("ids", hour, shard)
                for i in range(0, len(hashes), 1000):
                    pipe.sadd(dest, *hashes[i : i + 1000])
                pipe.expireat(dest, at)
            pipe.delete(raw)
            await pipe.execute()
            moved += len(members)
        if moved:
            log.info("de-duplication: %d msg_ids moved to hashed, sharded sets", moved)
        return moved

    async def meta(self) -> dict[str, str]:
        """``P:meta`` as a str -> str dict."""
        raw = await self.r.hgetall(self.key("meta"))
        # the client is created with decode_responses=False: keys and values are bytes
        return {_text(k): _text(v) for k, v in raw.items()}

    # -- reads -------------------------------------------------------------

    def bucket_for(self, window_s: int) -> int:
        """The bucket size a window is read from."""
        return choose_bucket(window_s, self.buckets_s)

    async def read_buckets(
        self, bucket_s: int, starts: Sequence[int], usercat: bool = True
    ) -> list[Counts]:
        """Read several buckets in one pipeline; missing buckets are empty.

        ``usercat=False``: the ``:uc`` hashes are not read (``usercat`` left empty).
        """
        width = 5 if usercat else 4
        async with self.r.pipeline(transaction=False) as pipe:
            for s in starts:
                base = self.key("b", bucket_s, s)
                pipe.hget(base + ":n", "messages")
                pipe.hgetall(base + ":t")
                pipe.hgetall(base + ":c")
                pipe.hgetall(base + ":u")
                if usercat:
                    pipe.hgetall(base + ":uc")
            res = await pipe.execute()
        out = []
        for i in range(len(starts)):
            n, t, c, u = res[width * i : width * i + 4]
            counts = Counts(messages=int(n or 0))
            counts.topics.update({k.decode(): int(v) for k, v in t.items()})
            counts.categories.update({k.decode(): int(v) for k, v in c.items()})
            counts.users.update({k.decode(): int(v) for k, v in u.items()})
            if usercat:
                for k, v in res[width * i + 4].items():
                    user, _, cat = k.decode().partition(UC_SEP)
                    counts.usercat[(user, cat)] = int(v)
            out.append(counts)
        return out

    async def read_window(self, window_s: int, end: float, usercat: bool = True) -> Counts:
        """The counts of the window of ``window_s`` seconds ending at ``end``.

        ``usercat=False``: without the per-user-per-category counts (the
        listener's running totals do not keep them).

        Raises:
            ValueError: no configured bucket size fits ``window_s``.
        """
        b = self.bucket_for(window_s)
        starts = list(window_buckets(end, window_s, b))
        total = Counts()
        for i in range(0, len(starts), 50):
            for counts in await self.read_buckets(b, starts[i : i + 50], usercat):
                total.merge(counts, usercat=usercat)
        return total

    async def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Wait until Redis answers PING.

        Raises:
            listener.core.errors.TransientError: not reachable within ``timeout_s``.
            listener.core.errors.ConfigError: Redis answers but refuses the URL's
                settings (a database index it does not have, a wrong password):
                waiting would not help.
        """
        deadline = asyncio.get_running_loop().time() + timeout_s
        last: Exception | None = None
        while asyncio.get_running_loop().time() < deadline:
            try:
                if await self.ping():
                    return
            except Exception as exc:  # redis ConnectionError, OSError
                if _is_config_reply(exc):
                    raise ConfigError(f"Redis refuses the URL's settings: {exc}") from exc
                if last is None:  # say why nothing happens for up to timeout_s
                    log.info("waiting up to %.0f s for Redis (%s)", timeout_s, exc)
                last = exc
            await asyncio.sleep(0.1)
        raise TransientError(f"Redis not reachable after {timeout_s} s: {last}")
