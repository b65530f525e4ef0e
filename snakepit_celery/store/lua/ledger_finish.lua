-- KEYS: task ledger hash   ARGV: -   (a missing entry stays missing)
check_writes(KEYS, {'HINCRBY', 'HDEL'})
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'finishes', 1)
  redis.call('HDEL', KEYS[1], 'running_on', 'lease_until', 'lease_at', 'released_run')
end
return 0
