-- KEYS: task ledger hash, task crash history zset   ARGV: (none)
-- Forget a task's crashes: its replay from the quarantine starts with a fresh count.
check_writes(KEYS, {'DEL'})
return redis.call('DEL', KEYS[1], KEYS[2])
