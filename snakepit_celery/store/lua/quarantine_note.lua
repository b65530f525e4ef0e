-- KEYS: crash history zset of one task ({task:<id>}:crashes)   ARGV: crash JSON, max entries, ttl_ms
-- Append one crash to the task's history (member '<time>|<JSON>' scored by time), keep the
-- newest max entries.
check_writes(KEYS, {'ZADD', 'ZREMRANGEBYRANK', 'PEXPIRE'})
local now = store_now()
redis.call('ZADD', KEYS[1], fmt(now), stamp(now) .. '|' .. ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[2]) - 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
