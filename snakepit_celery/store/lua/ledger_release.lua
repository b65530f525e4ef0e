-- KEYS: task ledger hash   ARGV: ttl_ms, died (1: the node holding it stops with an error)
-- A node gives the task's message back to the broker without having started it
-- (warm shutdown): its next delivery is not a lost one. A node whose main process
-- stops with an error also counts a death against the message. The entry lives at
-- least ttl_ms. -> the deaths counted so far
check_writes(KEYS, {'HSET', 'HINCRBY', 'PEXPIRE'})
redis.call('HSET', KEYS[1], 'released', 1)
local deaths
if ARGV[2] == '1' then
  deaths = redis.call('HINCRBY', KEYS[1], 'deaths', 1)
else
  deaths = tonumber(redis.call('HGET', KEYS[1], 'deaths')) or 0
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return deaths
