-- KEYS: taint zset, details hash   ARGV: member, or '' for all   -> live taints lifted
check_writes(KEYS, {'DEL', 'ZREM', 'HDEL'})
local now = store_now()
if ARGV[1] == '' then
  local live = redis.call('ZCOUNT', KEYS[1], '(' .. fmt(now), '+inf')
  redis.call('DEL', KEYS[1], KEYS[2])
  return live
end
local expires = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if expires and expires > now then
  return 1
end
return 0
