-- KEYS: breaker hash, probe lease zset
-- ARGV: reset_timeout, half_open_max_calls, probe_ttl, key_ttl_ms
-- -> {allowed 0/1, state, retry_after, probe token|nil, transition|nil, failures}
check_writes(KEYS, {'DEL', 'HINCRBY', 'HSET', 'PEXPIRE', 'ZADD', 'ZREMRANGEBYSCORE'})
local now = store_now()
local probe_ttl = tonumber(ARGV[3])
local h = redis.call('HMGET', KEYS[1], 'state', 'failures', 'opened_at', 'config')
local state = h[1] or 'closed'
local failures = tonumber(h[2]) or 0
-- the breaker's stored config (breaker_record) wins over the caller's numbers
local config = h[4] and cjson.decode(h[4]) or {}
local reset_timeout = tonumber(config.reset_timeout) or tonumber(ARGV[1])
local max_calls = tonumber(config.half_open_max_calls) or tonumber(ARGV[2])
if state == 'closed' then
  return {1, 'closed', '0', false, false, failures}
end
local transition = false
if state == 'open' then
  local remaining = (tonumber(h[3]) or 0) + reset_timeout - now
  if remaining > 0 then
    return {0, 'open', fmt(remaining), false, false, failures}
  end
  redis.call('HSET', KEYS[1], 'state', 'half_open')
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('DEL', KEYS[2])
  transition = 'half_open'
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) < max_calls then
  local token = fmt(now) .. ':' .. redis.call('HINCRBY', KEYS[1], 'seq', 1)
  redis.call('ZADD', KEYS[2], now + probe_ttl, token)
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  return {1, 'half_open', '0', token, transition, failures}
end
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local retry_after = 0
if first[2] then
  retry_after = math.max(0, tonumber(first[2]) - now)
end
return {0, 'half_open', fmt(retry_after), false, transition, failures}
