-- KEYS: crash history list of one task   ARGV: (none)
-- The task's crash history, oldest first; no writes.
return redis.call('LRANGE', KEYS[1], 0, -1)
