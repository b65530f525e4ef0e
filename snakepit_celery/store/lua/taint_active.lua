-- KEYS: taint zset   ARGV: member   (no writes)   -> 1 while tainted, else 0
local expires = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
if expires and expires > store_now() then
  return 1
end
return 0
