-- KEYS: pool meta hash, crashes zset, workers zset   ARGV: window   (no writes; O(log n))
-- -> {total, crashes_in_window, workers with a crash in the window}
local cutoff = '(' .. fmt(store_now() - tonumber(ARGV[1]))
return {
  tonumber(redis.call('HGET', KEYS[1], 'total')) or 0,
  redis.call('ZCOUNT', KEYS[2], cutoff, '+inf'),
  redis.call('ZCOUNT', KEYS[3], cutoff, '+inf'),
}
