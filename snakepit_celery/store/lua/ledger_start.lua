-- KEYS: task ledger hash
-- ARGV: worker_id, lease, ttl_ms, known (the message's crash header), came_back (1: redelivered)
-- -> {starts, finishes, crashes, running_on|nil, released, held_for} as they were before this
--    start (held_for: seconds since running_on took or renewed its lease, when it is live)
--    (crashes: a lapsed lease counted, then raised to what the message proves: known, plus
--    its lost delivery when it came back and was not given back unstarted);
--    running_on set means another worker holds a live lease and nothing was written;
--    released = 1 when this delivery is one a node gave back unstarted (ledger_release):
--    the mark is consumed here and kept as released_run until this run ends.
check_writes(KEYS, {'HINCRBY', 'HDEL', 'HSET', 'PEXPIRE'})
local now = store_now()
local h = redis.call('HMGET', KEYS[1], 'starts', 'finishes', 'crashes', 'running_on', 'lease_until',
  'released', 'lease_at')
local starts = tonumber(h[1]) or 0
local finishes = tonumber(h[2]) or 0
local crashes = tonumber(h[3]) or 0
if h[4] then
  local live = (tonumber(h[5]) or 0) > now
  if live and h[4] ~= ARGV[1] then
    return {starts, finishes, crashes, h[4], 0, fmt(now - (tonumber(h[7]) or 0))}
  end
  if not live then
    crashes = redis.call('HINCRBY', KEYS[1], 'crashes', 1)
  end
end
local known = tonumber(ARGV[4]) or 0
if ARGV[5] == '1' and not h[6] then
  known = known + 1
end
if known > crashes then
  crashes = known
  redis.call('HSET', KEYS[1], 'crashes', crashes)
end
local released = 0
if h[6] then
  released = 1
  redis.call('HDEL', KEYS[1], 'released')
  redis.call('HSET', KEYS[1], 'released_run', 1)
else
  redis.call('HDEL', KEYS[1], 'released_run')
end
redis.call('HINCRBY', KEYS[1], 'starts', 1)
redis.call('HSET', KEYS[1], 'running_on', ARGV[1], 'lease_until', fmt(now + tonumber(ARGV[2])),
  'lease_at', fmt(now))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {starts, finishes, crashes, false, released, false}
