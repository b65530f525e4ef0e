-- KEYS: node expiry zset, node record hash, incarnation expiry zset, incarnation record hash
-- ARGV: node   (a clean shutdown: the current incarnation leaves nothing to reap)
check_writes(KEYS, {'ZREM', 'HDEL'})
local record = redis.call('HGET', KEYS[2], ARGV[1])
if record then
  local first = string.find(record, '|', 1, true)
  local second = first and string.find(record, '|', first + 1, true)
  if second then
    local member = ARGV[1] .. '|' .. string.sub(record, first + 1, second - 1)
    redis.call('ZREM', KEYS[3], member)
    redis.call('HDEL', KEYS[4], member)
  end
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 0
