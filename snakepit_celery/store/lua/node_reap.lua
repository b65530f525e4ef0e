-- KEYS: incarnation expiry zset, incarnation record hash, reaped incarnations zset,
--       group pulse, node expiry zset
-- ARGV: grace, retention, reclaim, quiet, done 'node|incarnation'...
-- Claims (returns) the last records of incarnations whose heartbeat expired more
-- than `grace` seconds ago: one caller gets each, atomically. A claimed record is
-- hidden for `reclaim` seconds and dropped once a caller names it done (a later
-- call); not done by then (its claimer died, or this reply was lost), it is handed
-- out again. Each claimed incarnation is remembered as reaped for `retention`
-- seconds, so it is fenced (node_register refuses it) should it come back. A group
-- silent for more than `quiet` s first moves its running expiries on (resume): a
-- store outage makes no live node look dead.
-- -> {now, 'node|incarnation', 'heartbeat|incarnation|JSON', ...}
check_writes(KEYS, {'HDEL', 'HSET', 'ZREM', 'ZREMRANGEBYSCORE', 'ZADD', 'PEXPIREAT'})
local now = store_now()
local retention = tonumber(ARGV[2])
local reclaim = tonumber(ARGV[3])
resume(KEYS[4], {KEYS[5], KEYS[1]}, now, tonumber(ARGV[4]), retention)
for i = 5, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
prune(KEYS[1], KEYS[2], now - retention)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - retention)
local cutoff = now - tonumber(ARGV[1])
local out = add_records({fmt(now)}, KEYS[2], redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff))
for i = 2, #out, 2 do
  redis.call('ZADD', KEYS[3], now, out[i])
  redis.call('ZADD', KEYS[1], now + reclaim, out[i])
end
if #out > 1 then
  expire_at(KEYS[3], now + retention)
  local last = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
  expire_at(KEYS[1], last + retention)
  expire_at(KEYS[2], last + retention)
end
return out
