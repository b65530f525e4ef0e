-- KEYS: task ledger hash   ARGV: ttl_ms
-- A node gives the task's message back to the broker without having started it
-- (warm shutdown): its next delivery is not a lost one. The entry lives at least ttl_ms.
check_writes(KEYS, {'HSET', 'PEXPIRE'})
redis.call('HSET', KEYS[1], 'released', 1)
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 1
