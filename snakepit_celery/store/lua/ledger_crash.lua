-- KEYS: task ledger hash   ARGV: ttl_ms   -> {starts, finishes, crashes} after it
redis.call('HINCRBY', KEYS[1], 'crashes', 1)
redis.call('HDEL', KEYS[1], 'running_on', 'lease_until')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
local h = redis.call('HMGET', KEYS[1], 'starts', 'finishes', 'crashes')
return {tonumber(h[1]) or 0, tonumber(h[2]) or 0, tonumber(h[3]) or 0}
