-- KEYS: taint zset, details hash   ARGV: -   (prunes expired members)
-- -> {now, member, expiry, details JSON, member, expiry, details JSON, ...}
check_writes(KEYS, {'HDEL', 'ZREMRANGEBYSCORE'})
local now = store_now()
prune(KEYS[1], KEYS[2], now)
local out = {fmt(now)}
local live = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #live, 2 do
  out[#out + 1] = live[i]
  out[#out + 1] = live[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], live[i]) or '{}'
end
return out
