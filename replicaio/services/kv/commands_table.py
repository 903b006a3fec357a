"""The Redis commands the state machine runs on typed values (its ``redis`` operation).

:data:`REDIS_COMMANDS` maps a command's lower-case name to its handler and
whether it only reads (then ``KeyValueStateMachine.read`` runs it, at a read
index; anything else goes through the log). The Redis front
(``redis_commands``) names these commands; the handlers live in
``commands_keys`` (strings, expiry, keyspace, client lock scripts) and
``commands_collections`` (hashes, lists, sets, sorted sets). The names are
part of the replicated command format: never rename one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from replicaio.services.kv import commands_collections as coll
from replicaio.services.kv import commands_keys as keys

if TYPE_CHECKING:
    from replicaio.services.kv.state_machine import KeyValueStateMachine

Handler = Callable[["KeyValueStateMachine", tuple[object, ...]], object]


@dataclass(frozen=True, slots=True)
class RedisSpec:
    handler: Handler
    read_only: bool


def _specs(read_only: bool, **handlers: Callable[..., Any]) -> dict[str, RedisSpec]:
    return {name: RedisSpec(handler, read_only) for name, handler in handlers.items()}


REDIS_COMMANDS: Final[dict[str, RedisSpec]] = {
    **_specs(
        True,
        exists=keys.command_exists, dbsize=keys.command_dbsize, type=keys.command_type,
        keys=keys.command_keys, scan=keys.command_scan, ttl=keys.command_ttl,
        pttl=keys.command_pttl, expiretime=partial(keys.command_expiretime, scale=1000),
        pexpiretime=partial(keys.command_expiretime, scale=1), getrange=keys.command_getrange,
        hget=coll.command_hget, hmget=coll.command_hmget, hgetall=coll.command_hgetall,
        hkeys=coll.command_hkeys, hvals=coll.command_hvals, hlen=coll.command_hlen,
        hexists=coll.command_hexists, hstrlen=coll.command_hstrlen,
        lrange=coll.command_lrange, llen=coll.command_llen, lindex=coll.command_lindex,
        smembers=coll.command_smembers, sismember=coll.command_sismember,
        smismember=coll.command_smismember, scard=coll.command_scard,
        srandmember=partial(coll.command_spop, remove=False),
        sinter=partial(coll.command_setop, kind="inter"),
        sunion=partial(coll.command_setop, kind="union"),
        sdiff=partial(coll.command_setop, kind="diff"),
        zscore=coll.command_zscore, zmscore=coll.command_zmscore, zcard=coll.command_zcard,
        zcount=coll.command_zcount, zrange=coll.command_zrange,
        zrevrange=partial(coll.command_zrange, mode="rev"),
        zrangebyscore=partial(coll.command_zrange, mode="score"),
        zrevrangebyscore=partial(coll.command_zrange, mode="score,rev"),
        zrank=partial(coll.command_zrank, reverse=False),
        zrevrank=partial(coll.command_zrank, reverse=True),
    ),
    **_specs(
        False,
        set=keys.command_set, setex=partial(keys.command_setex, option=b"EX"),
        psetex=partial(keys.command_setex, option=b"PX"), getex=keys.command_getex,
        getdel=keys.command_getdel, getset=keys.command_getset, msetnx=keys.command_msetnx,
        incrbyfloat=keys.command_incrbyfloat, setrange=keys.command_setrange,
        expire=partial(keys.command_expire, option=b"EX", name="expire"),
        pexpire=partial(keys.command_expire, option=b"PX", name="pexpire"),
        expireat=partial(keys.command_expire, option=b"EXAT", name="expireat"),
        pexpireat=partial(keys.command_expire, option=b"PXAT", name="pexpireat"),
        persist=keys.command_persist,
        rename=partial(keys.command_rename, only_new=False),
        renamenx=partial(keys.command_rename, only_new=True),
        copy=keys.command_copy, flushdb=keys.command_flush, flushall=keys.command_flush,
        lock_release=keys.command_lock_release, lock_extend=keys.command_lock_extend,
        lock_reacquire=keys.command_lock_reacquire,
        hset=coll.command_hset, hsetnx=partial(coll.command_hset, only_new=True),
        hmset=coll.command_hmset, hdel=coll.command_hdel,
        hincrby=partial(coll.command_hincrby, floating=False),
        hincrbyfloat=partial(coll.command_hincrby, floating=True),
        lpush=partial(coll.command_push, left=True, only_existing=False),
        rpush=partial(coll.command_push, left=False, only_existing=False),
        lpushx=partial(coll.command_push, left=True, only_existing=True),
        rpushx=partial(coll.command_push, left=False, only_existing=True),
        lpop=partial(coll.command_pop, left=True), rpop=partial(coll.command_pop, left=False),
        lset=coll.command_lset, lrem=coll.command_lrem, ltrim=coll.command_ltrim,
        linsert=coll.command_linsert, lmove=coll.command_lmove,
        rpoplpush=coll.command_rpoplpush,
        sadd=coll.command_sadd, srem=coll.command_srem,
        spop=partial(coll.command_spop, remove=True), smove=coll.command_smove,
        sinterstore=partial(coll.command_setop_store, kind="inter"),
        sunionstore=partial(coll.command_setop_store, kind="union"),
        sdiffstore=partial(coll.command_setop_store, kind="diff"),
        zadd=coll.command_zadd, zincrby=coll.command_zincrby, zrem=coll.command_zrem,
        zpopmin=partial(coll.command_zpop, highest=False),
        zpopmax=partial(coll.command_zpop, highest=True),
        zremrangebyscore=coll.command_zremrangebyscore,
    ),
}
