-- KEYS: breaker hash, probe lease zset   ARGV: -   -> keys removed
return redis.call('DEL', KEYS[1], KEYS[2])
