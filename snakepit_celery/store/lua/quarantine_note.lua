-- KEYS: crash history list of one task ({task:<id>}:crashes)   ARGV: crash JSON, max entries, ttl_ms
-- Append one crash to the task's history (kept for its quarantine), newest max entries.
check_writes(KEYS, {'RPUSH', 'LTRIM', 'PEXPIRE'})
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
