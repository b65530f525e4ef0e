-- KEYS: by-worker zset, pool meta hash   ARGV: worker_id, window   (no writes; O(log n))
-- -> {crashes of the worker in the window, last crash time or nil, stored config JSON|nil}
local config = redis.call('HGET', KEYS[2], 'config')
local window = config and tonumber(cjson.decode(config).crash_window) or tonumber(ARGV[2])
local cutoff = store_now() - window
local prefix = worker_prefix(ARGV[1])
local count = redis.call('ZLEXCOUNT', KEYS[1], '(' .. prefix .. stamp(cutoff) .. '|\255',
  '[' .. prefix .. '\255')
local newest = redis.call('ZREVRANGEBYLEX', KEYS[1], '[' .. prefix .. '\255', '[' .. prefix,
  'LIMIT', 0, 1)[1]
local last = false
if newest and count > 0 then
  last = fmt(tonumber(string.sub(newest, #prefix + 1, #prefix + 17)))
end
return {count, last, config}
