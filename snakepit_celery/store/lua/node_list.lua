-- KEYS: node expiry zset, node record hash   ARGV: -   (prunes dead nodes)
-- -> {now, node, 'heartbeat|JSON', node, 'heartbeat|JSON', ...}
check_writes(KEYS, {'HDEL', 'ZREMRANGEBYSCORE'})
local now = store_now()
prune(KEYS[1], KEYS[2], now)
return add_records({fmt(now)}, KEYS[2], redis.call('ZRANGE', KEYS[1], 0, -1))
