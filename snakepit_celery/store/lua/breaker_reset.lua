-- KEYS: breaker hash, probe lease zset   ARGV: -
-- -> the state before the reset ('closed' when none), so one of racing resets sees the close
check_writes(KEYS, {'DEL'})
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
redis.call('DEL', KEYS[1], KEYS[2])
return state
