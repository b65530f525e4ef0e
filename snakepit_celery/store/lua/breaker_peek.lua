-- KEYS: breaker hash, probe lease zset   ARGV: reset_timeout   (no writes)
-- -> {state, failures, successes, live probes, retry_after, stored config JSON|nil}
local now = store_now()
local h = redis.call('HMGET', KEYS[1], 'state', 'failures', 'successes', 'opened_at', 'config')
local state = h[1] or 'closed'
local retry_after = 0
local live = 0
local reset_timeout = h[5] and tonumber(cjson.decode(h[5]).reset_timeout) or tonumber(ARGV[1])
if state == 'open' then
  retry_after = (tonumber(h[4]) or 0) + reset_timeout - now
  if retry_after <= 0 then
    state = 'half_open'
    retry_after = 0
  end
elseif state == 'half_open' then
  live = redis.call('ZCOUNT', KEYS[2], '(' .. fmt(now), '+inf')
end
return {state, tonumber(h[2]) or 0, tonumber(h[3]) or 0, live, fmt(retry_after), h[5]}
