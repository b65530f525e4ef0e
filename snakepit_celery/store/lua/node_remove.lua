-- KEYS: node expiry zset, node record hash   ARGV: node
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 0
