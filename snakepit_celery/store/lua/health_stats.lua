-- KEYS: pool meta hash, crashes zset, workers zset   ARGV: window   (no writes; O(log n))
-- -> {total, crashes_in_window, workers with a crash in the window, stored config JSON|nil}
-- The pool's stored config, when there is one, gives the window.
local config = redis.call('HGET', KEYS[1], 'config')
local window = config and tonumber(cjson.decode(config).crash_window) or tonumber(ARGV[1])
local cutoff = '(' .. fmt(store_now() - window)
return {
  tonumber(redis.call('HGET', KEYS[1], 'total')) or 0,
  redis.call('ZCOUNT', KEYS[2], cutoff, '+inf'),
  redis.call('ZCOUNT', KEYS[3], cutoff, '+inf'),
  config,
}
