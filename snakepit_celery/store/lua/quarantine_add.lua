-- KEYS: quarantine index zset, quarantine records hash
-- ARGV: entry id, ttl (s), max entries, record JSON
-- Keep one message in the quarantine until now+ttl (a second add replaces it), drop the
-- expired ones, then the oldest beyond max entries. Returns {now, evicted id...}.
check_writes(KEYS, {'ZADD', 'HSET', 'HDEL', 'ZREMRANGEBYSCORE', 'ZREMRANGEBYRANK', 'PEXPIREAT'})
local index, records = KEYS[1], KEYS[2]
local now = store_now()
prune(index, records, fmt(now))
local expires = now + tonumber(ARGV[2])
redis.call('ZADD', index, fmt(expires), ARGV[1])
redis.call('HSET', records, ARGV[1], fmt(now) .. '|' .. ARGV[4])
local out = {fmt(now)}
local excess = redis.call('ZCARD', index) - tonumber(ARGV[3])
if excess > 0 then
  local gone = redis.call('ZRANGE', index, 0, excess - 1)
  redis.call('HDEL', records, unpack(gone))
  redis.call('ZREMRANGEBYRANK', index, 0, excess - 1)
  for _, id in ipairs(gone) do out[#out + 1] = id end
end
local last = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
if #last > 0 then
  expire_at(index, tonumber(last[2]))
  expire_at(records, tonumber(last[2]))
end
return out
