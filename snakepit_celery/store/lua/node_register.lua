-- KEYS: node expiry zset, node record hash, incarnation expiry zset, incarnation record hash,
--       reaped incarnations zset, group pulse
-- ARGV: node, ttl, record JSON, incarnation, retention, quiet
-- Live records leave at once when they expire; each incarnation's last record
-- stays (hidden) `retention` seconds longer, for node_reap. An incarnation that
-- was reaped is fenced: nothing is written and 0 is returned (else 1). A group
-- silent for more than `quiet` s first moves its running expiries on (resume).
check_writes(KEYS, {'HDEL', 'ZREMRANGEBYSCORE', 'ZADD', 'HSET', 'PEXPIREAT'})
local member = ARGV[1] .. '|' .. ARGV[4]
if redis.call('ZSCORE', KEYS[5], member) then
  return 0
end
local now = store_now()
local retention = tonumber(ARGV[5])
resume(KEYS[6], {KEYS[1], KEYS[3]}, now, tonumber(ARGV[6]), retention)
prune(KEYS[1], KEYS[2], now)
prune(KEYS[3], KEYS[4], now - retention)
local expiry = now + tonumber(ARGV[2])
local value = fmt(now) .. '|' .. ARGV[4] .. '|' .. ARGV[3]
redis.call('ZADD', KEYS[1], expiry, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], value)
redis.call('ZADD', KEYS[3], expiry, member)
redis.call('HSET', KEYS[4], member, value)
local last = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
expire_at(KEYS[1], last)
expire_at(KEYS[2], last)
local last_incarnation = tonumber(redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')[2])
expire_at(KEYS[3], last_incarnation + retention)
expire_at(KEYS[4], last_incarnation + retention)
return 1
