-- KEYS: task ledger hash   ARGV: worker_id, lease (s; <= 0 lets go), ttl_ms
-- -> 1 when the worker holds the lease after this call (or let it go), 0 when another
--    worker holds a live one (nothing written). A first delivery has no entry: this
--    creates it, so a copy of its message delivered while it runs is not run again.
check_writes(KEYS, {'HSET', 'HDEL', 'PEXPIRE'})
local h = redis.call('HMGET', KEYS[1], 'running_on', 'lease_until')
local lease = tonumber(ARGV[2])
if lease <= 0 then
  if h[1] == ARGV[1] then
    redis.call('HDEL', KEYS[1], 'running_on', 'lease_until', 'lease_at')
  end
  return 1
end
local now = store_now()
if h[1] and h[1] ~= ARGV[1] and (tonumber(h[2]) or 0) > now then
  return 0
end
redis.call('HSET', KEYS[1], 'running_on', ARGV[1], 'lease_until', fmt(now + lease), 'lease_at',
  fmt(now))
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
