-- KEYS: node expiry zset, node record hash   ARGV: -   (prunes dead nodes)
-- -> {now, node, 'heartbeat|JSON', node, 'heartbeat|JSON', ...}
check_writes(KEYS, {'HDEL', 'ZREMRANGEBYSCORE'})
local now = store_now()
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #dead > 0 then
  redis.call('HDEL', KEYS[2], unpack(dead))
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
end
local out = {fmt(now)}
for _, node in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local record = redis.call('HGET', KEYS[2], node)
  if record then
    out[#out + 1] = node
    out[#out + 1] = record
  end
end
return out
