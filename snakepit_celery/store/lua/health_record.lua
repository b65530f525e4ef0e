-- KEYS: pool meta hash (total, seq), crashes zset ('<seq>|<len>|<worker>' -> time),
--       by-worker zset ('<len>|<worker>|<stamp>|<seq>', lex; stamp: fixed-width time),
--       workers zset (worker -> time of its latest kept crash)
-- ARGV: worker_id, window, max_entries, meta_ttl_ms, config JSON ('' = none)
-- -> {total, crashes_in_window, worker crashes in window, now, workers with crashes,
--     the pool's stored config JSON}
-- The first config written is the pool's (kept with its state); its window is used.
-- Every step is O(log n) in the crashes kept (plus O(log n) per pruned crash).
check_writes(KEYS, {'HINCRBY', 'HSET', 'ZADD', 'ZREM', 'ZREMRANGEBYSCORE', 'ZREMRANGEBYRANK',
  'PEXPIRE'})
local now = store_now()
local config = redis.call('HGET', KEYS[1], 'config')
if not config and ARGV[5] and ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'config', ARGV[5])
  config = ARGV[5]
end
local window = config and tonumber(cjson.decode(config).crash_window) or tonumber(ARGV[2])
local cap = math.max(1, tonumber(ARGV[3]))
local prefix = worker_prefix(ARGV[1])
local seq = string.format('%012d', redis.call('HINCRBY', KEYS[1], 'seq', 1))
local total = redis.call('HINCRBY', KEYS[1], 'total', 1)
redis.call('ZADD', KEYS[2], now, seq .. '|' .. prefix)
redis.call('ZADD', KEYS[3], 0, prefix .. stamp(now) .. '|' .. seq)
redis.call('ZADD', KEYS[4], now, ARGV[1])
-- members, scores: a WITHSCORES reply of crashes being pruned
local function drop(reply)
  for i = 1, #reply, 2 do
    local sep = string.find(reply[i], '|', 1, true)
    local owner = string.sub(reply[i], sep + 1)
    local bar = string.find(owner, '|', 1, true)
    if bar and string.sub(owner, -1) == '|' then
      local t = stamp(tonumber(reply[i + 1]))
      redis.call('ZREM', KEYS[3], owner .. t .. '|' .. string.sub(reply[i], 1, sep - 1))
      if redis.call('ZLEXCOUNT', KEYS[3], '[' .. owner, '[' .. owner .. '\255') == 0 then
        redis.call('ZREM', KEYS[4], string.sub(owner, bar + 1, -2))
      end
    end
  end
end
local cutoff = now - window
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff, 'WITHSCORES')
if #expired > 0 then
  drop(expired)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
end
local excess = redis.call('ZCARD', KEYS[2]) - cap
if excess > 0 then
  drop(redis.call('ZRANGE', KEYS[2], 0, excess - 1, 'WITHSCORES'))
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, excess - 1)
end
local mine = redis.call('ZLEXCOUNT', KEYS[3], '[' .. prefix, '[' .. prefix .. '\255')
local window_ms = math.ceil(window * 2000) + 1000
redis.call('PEXPIRE', KEYS[2], window_ms)
redis.call('PEXPIRE', KEYS[3], window_ms)
redis.call('PEXPIRE', KEYS[4], window_ms)
redis.call('PEXPIRE', KEYS[1], math.max(window_ms, tonumber(ARGV[4])))
return {total, redis.call('ZCARD', KEYS[2]), mine, fmt(now), redis.call('ZCARD', KEYS[4]),
  config}
