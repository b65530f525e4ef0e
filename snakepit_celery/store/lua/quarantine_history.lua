-- KEYS: crash history zset of one task   ARGV: (none)
-- The task's crash history ('<time>|<JSON>' members), oldest first; no writes.
return redis.call('ZRANGE', KEYS[1], 0, -1)
