-- KEYS: reservation zset ('<gpu>|<id>' -> expiry), sizes hash ('<gpu>|<id>' -> MB)
-- ARGV: gpu, reservation id, MB, capacity MB, ttl (s)
-- -> 1 when the GPU's live reservations plus MB fit in the capacity (then reserved), else 0
check_writes(KEYS, {'HDEL', 'ZREMRANGEBYSCORE', 'ZADD', 'HSET', 'PEXPIREAT'})
local now = store_now()
prune(KEYS[1], KEYS[2], now)
local member = ARGV[1] .. '|' .. ARGV[2]
local want = tonumber(ARGV[3])
local taken = 0
for _, other in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if other ~= member and string.sub(other, 1, #ARGV[1] + 1) == ARGV[1] .. '|' then
    taken = taken + (tonumber(redis.call('HGET', KEYS[2], other)) or 0)
  end
end
if taken + want > tonumber(ARGV[4]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[5]), member)
redis.call('HSET', KEYS[2], member, want)
local last = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
expire_at(KEYS[1], last)
expire_at(KEYS[2], last)
return 1
