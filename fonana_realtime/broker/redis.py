"""The Redis broker: fan-out across workers and hosts through Redis pub/sub.

Publishing: one envelope per event (wire.py), PUBLISHed to `<prefix><topic>` for each
topic of its route (`fonana:rt:channel:post_P`, `fonana:rt:user:U`). Nothing is delivered
locally at publish time: every worker, the publishing one included, delivers what
its listener receives, so all workers see the same order.

Listening: per worker, one listener greenlet and its subscriber connections, one per
shard (pubsub.py: one for a single Redis or Sentinel; one per master of a Cluster, with
SSUBSCRIBE, each holding the topics whose slots that master serves). The listener is the
only greenlet that touches them: it reads, and it writes the (S)SUBSCRIBE/UNSUBSCRIBE
commands that `listen`/`unlisten` ask for (woken through a pipe), batched per wake-up
(subscriptions.py keeps what is wanted, written and waited for; shards.py the connections
by shard, their probe channels and the missing shards; probe.py the probe's round trips). It holds only the topics fanout
asked for (`listen` and not yet `unlisten`: those with local
connections) plus this worker's private probe channel on each shard, used by `ready()`
and the probe for a real publish -> receive round trip. Every message it receives is
decoded (wire.Decoder) and handed to `on_message`. On a Cluster each connection is lost
alone (its master died, a slot moved away from it, the probe found it dead): the topics
it held wait, the slot map is read again, they are subscribed where they are served now
and caught up from history, while the other shards' connections go on untouched. With one
connection (one Redis, Sentinel), losing it is losing the link: it is built again.

"Subscribed means delivered": the first local subscriber of a topic waits (at most
SUBSCRIBE_WAIT) until Redis has acknowledged the SUBSCRIBE, and so does anyone who
joins the topic while that acknowledgement is still on its way.

Positions and history (PROTOCOL.md 7, redis_history.py): every publish runs the
publish script, which gives the event its offset in each stream of its route, keeps it
in the streams' history and PUBLISHes it, in one atomic step.

Which Redis: `link.py` (one Redis; Sentinel: the command client and each new listener
connection go to the master the sentinels name now; Cluster: to the masters the slot map
names now), so a failover is one more lost connection. A Cluster master that cannot be
reached does not hold up the others: its topics wait and the listener asks the slot map
again (with back-off) until a master serves them, then subscribes them there and catches
up. A connection that dies silently (publishes succeed, nothing arrives) is found by the
probe (readiness.py, one probe channel per shard) and rebuilt like a lost one.

Redis goes away: the listener reconnects with capped, jittered back-off and
resubscribes every topic it was asked for; publishes raise BrokerUnavailable (the
HTTP API answers 503); waits are bounded everywhere. Before a resubscribed stream goes
live again it catches up (the decisions are catchup.py's, the reads history_reads.py's): per stream it holds,
the worker knows up to which offset it has handed everything on (its mark: read from
Redis before the stream's first SUBSCRIBE, then moved by every message); once the new
SUBSCRIBEs are acknowledged it reads each stream's history after its mark and hands the
missed events on, in order, before the live messages that arrived meanwhile (held, then
handed unless already replayed). So an event Redis accepted while this worker's link was
down still reaches its clients, once. A stream whose epoch changed (Redis lost its data,
a failover) is replayed from the start of its new epoch (all of it is newer than the
loss), never from an old offset.
"""
from __future__ import annotations

import logging
import math
import os
import socket
import time
import uuid

import gevent
import gevent.select
import redis
from gevent.event import Event

from .. import metrics, wire
from ..redis_history import GHOST_SECONDS, RedisHistory
from . import Broker, BrokerUnavailable
from .backoff import backoff_delay
from .catchup import Catchup
from .history_reads import HistoryReads
from .link import open_link
from .pubsub import Desync, PubSubConn
from .probe import Probe
from .readiness import OK, SHARDS_MISSING, TIMEOUT, link_state
from .readiness import UNAVAILABLE as LINK_UNAVAILABLE
from .shards import Shards
from .subscriptions import Subscriptions

log = logging.getLogger("fonana_realtime.broker")

SUBSCRIBE_WAIT = 2.0        # a first subscriber waits at most this for Redis's acknowledgement
READY_WAIT = 2.0            # /ready: publish -> receive round trip through our own listener
LISTENER_TIMEOUT = 5.0      # subscriber connection: connect and mid-message reads
STABLE_LINK = 5.0           # a link that lived this long resets the back-off (no tight flapping)
YIELD_EVERY = 64            # a burst of messages: let client greenlets run between batches
DROP_LOG_EVERY = 10.0       # seconds between warnings about dropped (malformed) messages


class _Stalled(Exception):
    """The probe found the link silently dead: drop it and build a new one."""


class _CatchupFailed(Exception):
    """History could not be read while catching up: the link starts over (history_reads.py)."""


class RedisBroker(Broker):
    name = "redis"

    def __init__(self, url: str, prefix: str = wire.DEFAULT_PREFIX, *, history_size: int = 100,
                 history_seconds: float = 300, history_meta_seconds: float = 86400,
                 recovery_max: int = 300):
        super().__init__()
        self.link = open_link(url)
        self.where = self.link.where
        self.prefix = prefix
        self._bprefix = prefix.encode()
        self.client = self.link.client
        self.redis_history = RedisHistory(self.client, prefix, size=history_size,
                                          seconds=max(1, int(history_seconds)),
                                          meta_seconds=max(1, int(history_meta_seconds)))
        self.reads = HistoryReads(self.redis_history, recovery_max)
        # catch-up state: changed by the listener greenlet only (join_position reads it
        # from client greenlets)
        self.catchup = Catchup()                # marks, baselines, held messages (catchup.py)
        self._live = Event()                    # set while this link is caught up
        # listener state (only the listener greenlet writes the subscriber socket)
        self._greenlet = None
        self._keeper = None                     # renews the ghost metas of held streams
        self._prober = None                     # finds a silently dead link (probe.py)
        self._asking = None                     # asks the slot map for missing shards (_ask)
        self._answer = None                     # its answer, for the listener to take
        self._shards = Shards()                 # the link: a connection per shard (shards.py)
        self._probe = Probe(self.link, self._shards, self.where)     # its round trips (probe.py)
        self._topics = Subscriptions()          # wanted, written, waited for (subscriptions.py)
        self._rebuild: set[str] = set()         # shards the probe found dead: asked of the listener
        self._down = False                      # the last connection attempt failed / link lost
        self._stopping = False
        self._private = b""                     # this worker's own channel name, for ready()
        self._control = self._bprefix + b"control"   # every worker's: control messages (control.py)
        self._private_ev = Event()              # set once the new link's probe channels are acknowledged
        self._wake_r = self._wake_w = -1
        self._wake_pending = False
        self._decoder = wire.Decoder()
        self._dropped = 0
        self._drop_logged_at = 0.0
        self._connects = 0

    # ---- lifecycle ------------------------------------------------------------------

    def start(self):
        if self._greenlet is not None:
            return
        node = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._private = self._bprefix + b"worker:" + node.encode()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        metrics.BROKER_LINK_DOWN.set(1)         # until the first link is up
        self._greenlet = gevent.spawn(self._run)
        self._keeper = gevent.spawn(self._keep_ghosts)
        self._prober = gevent.spawn(self._probe.run, self._live, lambda: self._stopping,
                                    self._rebuild_shards)
        log.info("redis broker starting", extra={"event": "broker_start", "redis": self.where,
                                                 "prefix": self.prefix})

    def stop(self):
        self._stopping = True
        self._wake()
        for greenlet in (self._greenlet, self._keeper, self._prober, self._asking):
            if greenlet is not None:
                greenlet.kill(block=False)
        self._lost()
        self.link.close()

    # ---- publish ----------------------------------------------------------------------

    def publish(self, route, payload: bytes) -> dict:
        """Through the publish script: returns the event's {stream: offset}. A timeout
        is BrokerUnavailable although Redis may still run the script once it answers
        again (a frozen Redis does): the event is then delivered and kept, not lost."""
        topics = wire.route_topics(route)
        try:
            published = self.redis_history.publish(topics, payload)
        except redis.RedisError as exc:
            log.warning("publish to redis failed", extra={"event": "broker_publish_failed",
                                                         "error": type(exc).__name__})
            raise BrokerUnavailable(type(exc).__name__) from None
        metrics.BROKER_PUBLISHED.inc(len(topics))
        return published.offsets

    def publish_control(self, data: bytes) -> None:
        try:
            self.client.publish(self._control, data)
        except redis.RedisError as exc:
            log.warning("control publish to redis failed", extra={"event": "control_publish_failed",
                                                                 "error": type(exc).__name__})
            raise BrokerUnavailable(type(exc).__name__) from None

    # ---- positions and history ------------------------------------------------------

    def _keep_ghosts(self):
        """A stream nobody published to has a meta of GHOST_SECONDS (redis_history.py): while
        this worker holds it, its subscribers' epoch must not lapse, so renew it a few
        times per lifetime (one pipelined EXPIRE per held stream per 20 s)."""
        while True:
            gevent.sleep(GHOST_SECONDS / 3)
            try:
                self.redis_history.keep_ghosts([wire.topic_stream(t) for t in list(self._topics.wanted)])
            except Exception as exc:        # Redis away, or a bug: this greenlet must outlive it
                log.warning("redis: ghost metas not renewed", extra={"event": "broker_keep_ghosts_failed",
                                                                    "error": type(exc).__name__})

    def position(self, stream: str) -> tuple:
        return self.reads.position(stream)

    def history(self, stream: str, epoch, since: int, limit: int):
        return self.reads.history(stream, epoch, since, limit)

    def join_position(self, stream: str):
        """Where a connection joining `stream` now starts, without a round trip when this
        worker can tell (a legacy connection's resume mark, resume.py; two reads of Redis
        per legacy connect otherwise, a quarter of its CPU in a reconnect storm, issue 11):

        - the stream's topic is heard here (its SUBSCRIBE acknowledged on this link): the
          position this worker has handed on up to. Every later event of the stream comes
          on that subscription and reaches the connection, registered right after this;
          what was handed on before is before its join. Redis would answer the same or a
          later position.
        - nobody here hears it yet: the join makes the first SUBSCRIBE, and the listener
          reads the stream's position right before writing it (`_flush`). No
          event at or before that position can arrive on the new subscription: the
          connection's start, taken once the join is done.

        Otherwise (that SUBSCRIBE on its way, Redis down, no history kept) Redis is asked."""
        if self._shards and not self._down and self.redis_history.size:
            topic = wire.stream_topic(stream)
            acknowledged = self._topics.acknowledged(topic)
            if acknowledged:
                mark = self.catchup.mark(stream)
                if mark is not None:
                    return lambda: mark
            elif acknowledged is None and topic not in self._topics.wanted \
                    and self.catchup.mark(stream) is None:
                return lambda: self.catchup.take_baseline(stream)
        position = self.position(stream)
        return lambda: position

    # ---- listen / unlisten (called by fanout, in a client's greenlet) ----------------

    def listen(self, topic: str):
        """First local subscriber of `topic`: returns once Redis acknowledged the
        SUBSCRIBE, or after SUBSCRIBE_WAIT, or at once while Redis is down (the
        reconnect resubscribes every topic asked for)."""
        event = self._topics.want(topic)
        self._wake()
        if self._down or self._greenlet is None:
            return
        event.wait(SUBSCRIBE_WAIT)

    def wait_listening(self, topic: str):
        """A later subscriber: waits only while the first one's SUBSCRIBE is unacknowledged."""
        if self._down:
            return
        event = self._topics.waiter(topic)
        if event is not None and not event.is_set():
            event.wait(SUBSCRIBE_WAIT)

    def unlisten(self, topic: str):
        self._topics.unwant(topic)
        self._wake()

    def _wake(self):
        if not self._wake_pending and self._wake_w >= 0:
            self._wake_pending = True
            try:
                os.write(self._wake_w, b"!")
            except OSError:
                pass

    # ---- readiness ----------------------------------------------------------------------

    def link_state(self) -> str:
        state = link_state(started=self._greenlet is not None, down=self._down,
                           subscribed=self._private_ev.is_set(), live=self._live.is_set(),
                           stalled=self._probe.stalled)
        return SHARDS_MISSING if state == OK and self._shards.missing else state

    def ready(self) -> tuple[bool, str]:
        """The link's state (readiness.link_state), then a real round trip: publish a
        nonce to our probe channel on every shard we hear, wait for our own listener to
        receive them. A Cluster shard that is not heard now (its master died and no
        replica took over yet) does not make the worker unready: every host shares that
        shard, the others' streams flow, and the answer says `broker_shards_missing`."""
        if not (self._probe.stalled or self._down or self._greenlet is None):
            # (re)connecting, catching up from history: bounded waits
            self._private_ev.wait(READY_WAIT) and self._live.wait(READY_WAIT)
        state = self.link_state()
        if state not in (OK, SHARDS_MISSING):
            return False, state
        published, arrived = self._probe.round_trip(READY_WAIT)
        if not published:
            return False, LINK_UNAVAILABLE
        if not all(arrived.values()):
            return False, TIMEOUT
        return True, state

    def _rebuild_shards(self, shards: set):
        """The probe found these shards' connections silently dead (probe.py)."""
        self._rebuild.update(shards)
        self._wake()

    # ---- the listener greenlet -------------------------------------------------------

    def _run(self):
        attempt = 0
        logged_at = -math.inf
        while not self._stopping:
            connected_at = None
            try:
                self._connect()
                connected_at = time.monotonic()
                self._serve()
            except gevent.GreenletExit:
                raise
            except Exception as exc:        # never let the listener die: log, back off, retry
                expected = isinstance(exc, (redis.RedisError, OSError, Desync, _Stalled, _CatchupFailed))
                now = time.monotonic()
                if not self._stopping and (attempt == 0 or not expected or now - logged_at > 30):
                    logged_at = now
                    log.log(logging.WARNING if expected else logging.ERROR,
                            "redis listener: no link to redis, reconnecting with back-off",
                            exc_info=not expected,
                            extra={"event": "broker_disconnected", "redis": self.where,
                                   "error": type(exc).__name__, "attempt": attempt})
            self._lost()
            if self._stopping:
                break
            if connected_at is not None and time.monotonic() - connected_at > STABLE_LINK:
                attempt = 0                 # a link that lived: start the back-off over
            gevent.sleep(backoff_delay(attempt))
            attempt += 1

    def _connect(self):
        """A whole new link: a connection per shard the link names now."""
        conns = self.link.subscribers(LISTENER_TIMEOUT, self._name())
        self._down = False
        self._connects += 1
        if self._connects > 1:
            metrics.BROKER_RECONNECTS.inc()
        self._private_ev.clear()
        self._live.clear()
        self.catchup.link_up()                      # live messages wait until we caught up
        metrics.BROKER_CATCHING_UP.set(1)
        self._join(conns)
        self._flush()
        log.info("redis listener connected", extra={
            "event": "broker_connected", "redis": self.where, "topics": self._topics.written,
            "shards": len(self._shards.conns), "missing": len(self._shards.missing),
            "reconnect": self._connects > 1})

    def _name(self) -> str:
        return "fonana-rt-sub-" + str(os.getpid())

    def _join(self, conns: dict):
        """New connections of this link ({shard: Connection, or None: not reachable now}):
        each hears this worker's probe channel on it; every wanted topic not heard yet is
        looked at again (the next flush subscribes those whose shard is heard now); the
        control channel goes on one of them if no connection hears it."""
        joined = {shard: PubSubConn(conn, self.link.sharded) for shard, conn in conns.items() if conn}
        if self._shards.join(joined, [shard for shard, conn in conns.items() if conn is None]):
            log.warning("redis listener: shards unreachable, their topics wait", extra={
                "event": "broker_shards_missing", "redis": self.where,
                "shards": sorted(self._shards.missing)})
        metrics.BROKER_LINK_DOWN.set(1 if self._shards.missing else 0)
        self._topics.look_again()                   # everything this worker needs and lacks
        if joined:
            probes = self.link.probe_channels(self._private, joined)
            self._shards.add_probes(probes)
            for shard, probe in probes.items():
                self._write(shard, lambda pubsub, probe=probe: pubsub.subscribe([(probe, None)]))
        self._hear_control()

    def _hear_control(self):
        shard = self._shards.control_needed()
        if shard is not None:
            self._write(shard, lambda pubsub: pubsub.subscribe([(self._control, None)], classic=True))

    def _ask(self, connected: set):
        """Its own greenlet: the slot map read again and a connection tried to every master
        not in `connected`. A master that does not answer (its host gone, not refusing)
        takes up to LISTENER_TIMEOUT to give up on, and the listener must not stop
        reading the other shards meanwhile; it takes the answer when woken."""
        try:
            answer = self.link.rejoin(connected, LISTENER_TIMEOUT, self._name())
        except redis.RedisError as exc:
            answer = exc
        self._answer, self._asking = answer, None
        self._wake()

    def _rejoin(self, answer):
        """The shards not heard now, asked again (`_ask`): join what answered; the
        connected ones went on meanwhile, untouched unless a slot moved away from them."""
        if isinstance(answer, Exception):       # no slot map now: ask again later
            self._shards.rejoin_failed()
            log.warning("redis listener: slot map unreadable, asking again", extra={
                "event": "broker_rejoin_failed", "redis": self.where, "error": type(answer).__name__})
            return
        conns, moved = answer       # none heard yet: only this joins, and _lost drops a stale answer
        if any(conns.values()):
            metrics.BROKER_RECONNECTS.inc()
        self._join(conns)
        for shard in moved:
            self._lose_shard(shard, "a slot moved away from it")
        if not self._shards.missing:
            log.info("redis listener: every shard heard again", extra={
                "event": "broker_shards_joined", "redis": self.where, "shards": len(self._shards.conns)})

    def _lose_shard(self, shard: str, why: str):
        """One shard's connection is gone (its master died, a slot moved, the probe found
        it dead): only what it held is subscribed again once a rejoin finds where it is
        served, and caught up from history; the other shards' connections go on. With one
        shard (one Redis, Sentinel) or none left, the whole link is rebuilt instead."""
        if not self._shards.heard(shard):
            return
        if not self.link.sharded or len(self._shards.conns) == 1:
            raise redis.ConnectionError(f"the link's last connection was lost: {why}")
        log.warning("redis listener: lost one shard's connection, rebuilding it alone", extra={
            "event": "broker_shard_lost", "redis": self.where, "shard": shard, "why": why})
        pubsub = self._shards.lose(shard)
        carried = self._topics.connection_lost(
            [self.link.topic_of(self._bprefix, channel) for channel in pubsub.channels])
        pubsub.close()
        self.catchup.shard_lost([wire.topic_stream(topic) for topic in carried])
        metrics.BROKER_LINK_DOWN.set(1)
        metrics.BROKER_TOPICS.set(self._topics.written)
        self._hear_control()

    def _lost(self):
        """The link is gone: release everyone waiting on it; the next link resubscribes."""
        metrics.BROKER_LINK_DOWN.set(1)
        metrics.BROKER_CATCHING_UP.set(0)
        self._down = True
        if self._asking is not None:            # a rejoin of the link that is gone
            self._asking.kill(block=False)
        answer, self._asking, self._answer = self._answer, None, None
        if answer is not None and not isinstance(answer, Exception):
            for conn in answer[0].values():
                if conn is not None:
                    conn.disconnect()
        for pubsub in self._shards.clear():
            pubsub.close()
        self._topics.link_lost()
        self._rebuild.clear()
        self._private_ev.clear()
        self._live.clear()
        self.catchup.link_lost()
        metrics.BROKER_TOPICS.set(0)

    def _serve(self):
        wake = self._wake_r
        shards = self._shards
        while not self._stopping:
            if self._rebuild:
                rebuild, self._rebuild = self._rebuild, set()
                if not self.link.sharded:
                    raise _Stalled("a probe was published but never arrived")
                for shard in rebuild:
                    self._lose_shard(shard, "a probe was published but never arrived")
            timeout = LISTENER_TIMEOUT
            for shard, pubsub in list(shards.conns.items()):
                if shards.conns.get(shard) is not pubsub:
                    continue                    # lost meanwhile (a write to it failed)
                try:
                    self._read(pubsub)
                    timeout = min(timeout, pubsub.idle_timeout())
                except (redis.RedisError, OSError, Desync) as exc:
                    self._lose_shard(shard, type(exc).__name__)
            if self._topics.dirty:
                self._flush()
                continue
            if self.catchup.catching_up and not shards.pending():
                self._catch_up()
                continue
            if self._answer is not None:
                answer, self._answer = self._answer, None
                self._rejoin(answer)
                continue
            if shards.missing and self._asking is None:
                if shards.rejoin_in() <= 0:
                    self._asking = gevent.spawn(self._ask, set(shards.conns))
                else:
                    timeout = min(timeout, shards.rejoin_in() + 0.01)
            fds = [pubsub.fd for pubsub in shards.conns.values()] + [wake]
            readable, _, _ = gevent.select.select(fds, [], [], max(0.0, timeout))
            if wake in readable:
                self._wake_pending = False
                try:
                    while os.read(wake, 4096):
                        pass
                except BlockingIOError:
                    pass

    def _read(self, pubsub: PubSubConn):
        """Every reply this connection has now."""
        handled = 0
        while pubsub.readable():
            self._on_reply(pubsub.read())
            handled += 1
            if self.catchup.catching_up and not self._shards.pending():
                self._catch_up()            # at once, even while messages keep coming
            if handled % YIELD_EVERY == 0:
                gevent.sleep(0)
                if self._topics.dirty:
                    self._flush()

    def _flush(self):
        """Write the SUBSCRIBE/UNSUBSCRIBE commands the changed topics need, each on the
        connection of the shard that serves its channel (subscriptions.py decides which).
        A topic whose shard is not heard now waits for the rejoin; topics subscribed again
        after a lost connection catch up."""
        if not self._shards:
            return
        plan = self._topics.plan(lambda topic: self.link.shard_of(self._channel(topic)), self._shards.heard)
        for shard in plan.unheard:
            self._shards.wait_for(shard)
        for topic in plan.dropped:
            self.catchup.forget(wire.topic_stream(topic))
        topics = plan.topics()
        if topics:
            streams = [wire.topic_stream(topic) for topic in topics]
            if any(self.catchup.mark(stream) is not None for stream in streams):
                # held here before: events may have passed while it was not heard
                self.catchup.resubscribed(streams)
                metrics.BROKER_CATCHING_UP.set(1)
            self.reads.baselines(self.catchup, streams)
        for shard, items in plan.subscribe.items():
            channels = [(self._channel(topic), event) for topic, event in items]
            self._write(shard, lambda pubsub, channels=channels: pubsub.subscribe(channels))
        for shard, items in plan.unsubscribe.items():
            channels = [self._channel(topic) for topic in items]
            self._write(shard, lambda pubsub, channels=channels: pubsub.unsubscribe(channels))
        metrics.BROKER_TOPICS.set(self._topics.written)

    def _write(self, shard: str, command):
        """A command on one shard's connection; a connection that fails is that shard's
        loss alone (a connection already lost took its channels with it)."""
        pubsub = self._shards.conns.get(shard)
        if pubsub is None:
            return
        try:
            command(pubsub)
        except (redis.RedisError, OSError) as exc:
            self._lose_shard(shard, type(exc).__name__)

    def _channel(self, topic: str) -> bytes:
        return self.link.channel(self._bprefix, wire.topic_stream(topic))

    def _on_reply(self, reply):
        if reply is None:
            return
        if len(reply) == 2:
            try:
                self._on_message(*reply)
            except Exception:           # a bug on one message must not stop the others
                log.exception("redis listener: message handling failed",
                              extra={"event": "broker_message_error"})
            return
        channel = reply[1]
        if channel == self._control:
            self._control_heard()
        elif self._shards.probe_heard(channel):
            self._private_ev.set()

    def _nonce_channels(self):
        return self._shards.probes.values()

    def _control_heard(self):
        """The control channel is heard on this link: every later control message will
        arrive, so what was sent before (while the link was down) is read now, before any."""
        try:
            self.on_control_link()
        except Exception:
            log.exception("redis listener: control link hook failed", extra={"event": "control_error"})

    # ---- one message from Redis ---------------------------------------------------

    def _on_message(self, channel: bytes, data: bytes):
        if channel == self._control:
            self.on_control(data)
            return
        if channel in self._nonce_channels():
            self._probe.arrived(data)
            return
        metrics.BROKER_RECEIVED.inc()
        topic = self.link.topic_of(self._bprefix, channel)
        try:
            message = self._decoder.decode(topic, data)
        except wire.Drop as drop:
            return self._drop(drop.reason, topic)
        if message is None:                       # another copy of a union delivered
            return None
        if self.catchup.receive(message, self._hears):
            self.on_message(message)
        return None

    # ---- marks and catching up ---------------------------------------------------------

    def _hears(self, stream: str) -> bool:
        """Held here and heard now: a stream whose shard is unreachable is caught up once
        it is heard again (its mark waits; reading it now would fail the whole catch-up)."""
        topic = wire.stream_topic(stream)
        if topic not in self._topics.wanted:
            return False
        return not self._shards.missing or self._shards.heard(self.link.shard_of(self._channel(topic)))

    def _catch_up(self):
        """Every SUBSCRIBE of this link is acknowledged: read what each held stream
        missed since its mark, hand it on in order, then the held live messages."""
        try:
            replayed, lost = self.reads.missed(self.catchup, self._hears)
        except redis.RedisError as exc:
            raise _CatchupFailed(type(exc).__name__) from None
        messages, count = self.catchup.finish(replayed, self._hears)
        for message in messages:
            self.on_message(message)
        self._live.set()
        metrics.BROKER_CATCHING_UP.set(0)
        failed = sum(lost.values())
        for reason, streams in lost.items():
            metrics.BROKER_CATCHUP_FAILED.labels(reason).inc(streams)
        if count:
            metrics.BROKER_CATCHUP_EVENTS.inc(count)
        if lost:
            # one line per catch-up, not one per stream: after a long outage it can be thousands
            log.warning("redis: events missed while the link was down are no longer in history",
                        extra={"event": "broker_catchup_lost", "streams": failed,
                               "reason": ",".join(f"{k}:{v}" for k, v in sorted(lost.items()))})
        if count or failed or self._connects > 1:
            log.info("redis listener caught up", extra={
                "event": "broker_caught_up", "count": count, "streams": len(self.catchup.marks)})

    def _drop(self, reason: str, topic: str):
        """An untrusted message we cannot deliver: counted, logged without its payload."""
        self._dropped += 1
        now = time.monotonic()
        if now - self._drop_logged_at >= DROP_LOG_EVERY:
            self._drop_logged_at = now
            log.warning("dropped malformed message from redis", extra={
                "event": "broker_drop", "reason": reason, "topic": topic[:200],
                "dropped_total": self._dropped})
