-- KEYS: quarantine index zset, quarantine records hash   ARGV: entry id ('' for all)
-- The live (unexpired) entries, oldest first, or only the one asked for; no writes.
-- Returns {now, id, expiry, record, ...}; a record is '<quarantined at>|<JSON>'.
local index, records = KEYS[1], KEYS[2]
local now = store_now()
local out = {fmt(now)}
local ids
if ARGV[1] ~= '' then
  local score = redis.call('ZSCORE', index, ARGV[1])
  if not score or tonumber(score) <= now then return out end
  ids = {ARGV[1], score}
else
  ids = redis.call('ZRANGEBYSCORE', index, '(' .. fmt(now), '+inf', 'WITHSCORES')
end
for i = 1, #ids, 2 do
  local record = redis.call('HGET', records, ids[i])
  if record then
    out[#out + 1] = ids[i]
    out[#out + 1] = ids[i + 1]
    out[#out + 1] = record
  end
end
return out
