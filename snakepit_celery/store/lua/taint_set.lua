-- KEYS: taint zset (member -> expiry), details hash (member -> JSON)
-- ARGV: member, duration, details JSON   -> 1 when newly tainted, else 0
check_writes(KEYS, {'HDEL', 'ZREMRANGEBYSCORE', 'ZADD', 'HSET', 'PEXPIREAT'})
local now = store_now()
prune(KEYS[1], KEYS[2], now)
local old = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
local expires = now + tonumber(ARGV[2])
if old and old > expires then
  expires = old
end
redis.call('ZADD', KEYS[1], expires, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local last = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
expire_at(KEYS[1], last)
expire_at(KEYS[2], last)
if old then
  return 0
end
return 1
