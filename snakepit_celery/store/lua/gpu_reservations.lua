-- KEYS: reservation zset, sizes hash   ARGV: -
-- -> {gpu, MB reserved, gpu, MB reserved, ...} over live reservations (no writes)
local now = store_now()
local totals = {}
local order = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. fmt(now), '+inf')) do
  local gpu = string.match(member, '^(.*)|[^|]*$')
  if gpu then
    if not totals[gpu] then
      totals[gpu] = 0
      order[#order + 1] = gpu
    end
    totals[gpu] = totals[gpu] + (tonumber(redis.call('HGET', KEYS[2], member)) or 0)
  end
end
local out = {}
for _, gpu in ipairs(order) do
  out[#out + 1] = gpu
  out[#out + 1] = tostring(totals[gpu])
end
return out
