-- KEYS: incarnation expiry zset, incarnation record hash   ARGV: grace, retention
-- Claims (returns and removes) the last records of incarnations whose heartbeat
-- expired more than `grace` seconds ago: one caller gets each, atomically.
-- -> {now, 'node|incarnation', 'heartbeat|incarnation|JSON', ...}
check_writes(KEYS, {'HDEL', 'ZREMRANGEBYSCORE'})
local now = store_now()
prune(KEYS[1], KEYS[2], now - tonumber(ARGV[2]))
local cutoff = now - tonumber(ARGV[1])
local out = add_records({fmt(now)}, KEYS[2], redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff))
prune(KEYS[1], KEYS[2], cutoff)
return out
