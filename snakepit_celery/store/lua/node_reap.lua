-- KEYS: incarnation expiry zset, incarnation record hash, reaped incarnations zset
-- ARGV: grace, retention
-- Claims (returns and removes) the last records of incarnations whose heartbeat
-- expired more than `grace` seconds ago: one caller gets each, atomically. Each
-- claimed incarnation is remembered as reaped for `retention` seconds, so it is
-- fenced (node_register refuses it) should it come back.
-- -> {now, 'node|incarnation', 'heartbeat|incarnation|JSON', ...}
check_writes(KEYS, {'HDEL', 'ZREMRANGEBYSCORE', 'ZADD', 'PEXPIREAT'})
local now = store_now()
local retention = tonumber(ARGV[2])
prune(KEYS[1], KEYS[2], now - retention)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - retention)
local cutoff = now - tonumber(ARGV[1])
local out = add_records({fmt(now)}, KEYS[2], redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff))
for i = 2, #out, 2 do
  redis.call('ZADD', KEYS[3], now, out[i])
end
if #out > 1 then
  expire_at(KEYS[3], now + retention)
end
prune(KEYS[1], KEYS[2], cutoff)
return out
