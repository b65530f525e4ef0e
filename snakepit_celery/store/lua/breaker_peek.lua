-- KEYS: breaker hash, probe lease zset   ARGV: reset_timeout   (no writes)
-- -> {state, failures, successes, live probes, retry_after}
local now = store_now()
local h = redis.call('HMGET', KEYS[1], 'state', 'failures', 'successes', 'opened_at')
local state = h[1] or 'closed'
local retry_after = 0
local live = 0
if state == 'open' then
  retry_after = (tonumber(h[4]) or 0) + tonumber(ARGV[1]) - now
  if retry_after <= 0 then
    state = 'half_open'
    retry_after = 0
  end
elseif state == 'half_open' then
  live = redis.call('ZCOUNT', KEYS[2], '(' .. fmt(now), '+inf')
end
return {state, tonumber(h[2]) or 0, tonumber(h[3]) or 0, live, fmt(retry_after)}
