-- KEYS: quarantine index zset, quarantine records hash   ARGV: entry id
-- Take one live entry out of the quarantine. Returns {now, id, expiry, record} or {now}.
check_writes(KEYS, {'ZREM', 'HDEL'})
local index, records = KEYS[1], KEYS[2]
local now = store_now()
local out = {fmt(now)}
local score = redis.call('ZSCORE', index, ARGV[1])
local record = redis.call('HGET', records, ARGV[1])
redis.call('ZREM', index, ARGV[1])
redis.call('HDEL', records, ARGV[1])
if score and record and tonumber(score) > now then
  out[2], out[3], out[4] = ARGV[1], score, record
end
return out
