-- KEYS: breaker hash, probe lease zset
-- ARGV: success 1/0, failure_threshold, probe token or '', count, key_ttl_ms,
--       config JSON ('' = none)
-- -> {state, failures, transition|nil, the breaker's stored config JSON|nil}
-- The first config written is the breaker's (kept with its state); its threshold is used.
check_writes(KEYS, {'DEL', 'HINCRBY', 'HSET', 'PEXPIRE', 'ZREM'})
local now = store_now()
local count = tonumber(ARGV[4])
local h = redis.call('HMGET', KEYS[1], 'state', 'failures', 'config')
local state = h[1] or 'closed'
local failures = tonumber(h[2]) or 0
local config = h[3]
if not config and ARGV[6] and ARGV[6] ~= '' then
  redis.call('HSET', KEYS[1], 'config', ARGV[6])
  config = ARGV[6]
end
local threshold = config and tonumber(cjson.decode(config).failure_threshold)
  or tonumber(ARGV[2])
if ARGV[3] ~= '' then
  redis.call('ZREM', KEYS[2], ARGV[3])
end
local transition = false
if ARGV[1] == '1' then
  redis.call('HINCRBY', KEYS[1], 'successes', count)
  if state == 'half_open' then
    transition = 'closed'
    redis.call('DEL', KEYS[2])
  end
  if state ~= 'open' then
    state = 'closed'
    failures = 0
    redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0)
  end
else
  failures = redis.call('HINCRBY', KEYS[1], 'failures', count)
  if (state == 'closed' and failures >= threshold) or state == 'half_open' then
    state = 'open'
    transition = 'opened'
    redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', fmt(now))
    redis.call('DEL', KEYS[2])
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {state, failures, transition, config}
