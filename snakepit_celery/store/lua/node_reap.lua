-- KEYS: incarnation expiry zset, incarnation record hash   ARGV: grace, retention
-- Claims (returns and removes) the last records of incarnations whose heartbeat
-- expired more than `grace` seconds ago: one caller gets each, atomically.
-- -> {now, 'node|incarnation', 'heartbeat|incarnation|JSON', ...}
check_writes(KEYS, {'HDEL', 'ZREMRANGEBYSCORE'})
local now = store_now()
local retention = tonumber(ARGV[2])
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - retention)
if #gone > 0 then
  redis.call('HDEL', KEYS[2], unpack(gone))
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - retention)
end
local cutoff = now - tonumber(ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff)
local out = {fmt(now)}
for _, member in ipairs(dead) do
  local record = redis.call('HGET', KEYS[2], member)
  if record then
    out[#out + 1] = member
    out[#out + 1] = record
  end
end
if #dead > 0 then
  redis.call('HDEL', KEYS[2], unpack(dead))
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
end
return out
