-- KEYS: crashes zset, by-worker zset   ARGV: worker_id, window   (no writes)
-- -> {crashes of the worker in the window, last crash time or nil}
local cutoff = store_now() - tonumber(ARGV[2])
local prefix = ARGV[1] .. '|'
local count = 0
local last = false
for _, m in ipairs(redis.call('ZRANGEBYLEX', KEYS[2], '[' .. prefix, '[' .. prefix .. '\255')) do
  local seq = string.sub(m, #prefix + 1)
  if string.match(seq, '^%d+$') then
    local t = tonumber(redis.call('ZSCORE', KEYS[1], seq .. '|' .. ARGV[1]))
    if t and t > cutoff then
      count = count + 1
      if not last or t > last then
        last = t
      end
    end
  end
end
if last then
  last = fmt(last)
end
return {count, last}
