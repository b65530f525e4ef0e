-- KEYS: pool meta hash, crashes zset   ARGV: window   (no writes)
-- -> {total, crashes_in_window, member, time, member, time, ...} (members seq|worker)
local now = store_now()
local total = tonumber(redis.call('HGET', KEYS[1], 'total')) or 0
local recent = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. fmt(now - tonumber(ARGV[1])), '+inf', 'WITHSCORES')
local out = {total, #recent / 2}
for _, v in ipairs(recent) do
  out[#out + 1] = v
end
return out
