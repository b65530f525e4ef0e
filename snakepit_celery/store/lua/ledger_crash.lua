-- KEYS: task ledger hash   ARGV: ttl_ms, holder ('' : whoever runs it)
-- -> {starts, finishes, crashes, released} after it; released = 1 when the delivery that
--    crashed was one a node gave back unstarted (its mark, consumed or not, is dropped).
--    With a holder, only that worker's run is counted: when the ledger names another (or
--    none), nothing is written (the run was counted already, or another took it over).
check_writes(KEYS, {'HINCRBY', 'HDEL', 'PEXPIRE'})
local r = redis.call('HMGET', KEYS[1], 'released', 'released_run', 'running_on')
if ARGV[2] ~= '' and r[3] ~= ARGV[2] then
  local h = redis.call('HMGET', KEYS[1], 'starts', 'finishes', 'crashes')
  return {tonumber(h[1]) or 0, tonumber(h[2]) or 0, tonumber(h[3]) or 0, 0}
end
redis.call('HINCRBY', KEYS[1], 'crashes', 1)
redis.call('HDEL', KEYS[1], 'running_on', 'lease_until', 'lease_at', 'released', 'released_run')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
local h = redis.call('HMGET', KEYS[1], 'starts', 'finishes', 'crashes')
local released = 0
if r[1] or r[2] then
  released = 1
end
return {tonumber(h[1]) or 0, tonumber(h[2]) or 0, tonumber(h[3]) or 0, released}
