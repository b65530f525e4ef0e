-- Prepended to every script: the store clock and number formatting.
if redis.replicate_commands then redis.replicate_commands() end
local function store_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fmt(x)
  return string.format('%.6f', x)
end
local function expire_at(key, when)
  redis.call('PEXPIREAT', key, math.ceil(when * 1000) + 1000)
end
-- Sample arguments of each write command, for redis.acl_check_cmd.
local ACL_SAMPLE = {
  DEL = {}, HDEL = {'f'}, HINCRBY = {'f', '1'}, HSET = {'f', 'v'}, PEXPIRE = {'1'},
  PEXPIREAT = {'1'}, ZADD = {'0', 'm'}, ZREM = {'m'}, ZREMRANGEBYRANK = {'0', '0'},
  ZREMRANGEBYSCORE = {'0', '0'},
}
-- Refuse before the first write when this Redis user may not run one of `commands` on
-- `keys` (Redis 7+): a script stopped half-way would leave keys without their TTL.
local function check_writes(keys, commands)
  if not redis.acl_check_cmd then
    return
  end
  for _, key in ipairs(keys) do
    for _, cmd in ipairs(commands) do
      if not redis.acl_check_cmd(cmd, key, unpack(ACL_SAMPLE[cmd])) then
        error({err = 'NOPERM this Redis user may not run ' .. cmd .. ' on ' .. key})
      end
    end
  end
end
-- '<length>|<worker>|': a worker's part of a crash reference, unambiguous for any worker id.
local function worker_prefix(worker)
  return #worker .. '|' .. worker .. '|'
end
-- A crash time as a fixed-width string, so that lexical order is time order.
local function stamp(t)
  return string.format('%017.6f', t)
end
-- Drop the members of zset `index` scored up to `upto`, and their fields in hash `records`.
local function prune(index, records, upto)
  local gone = redis.call('ZRANGEBYSCORE', index, '-inf', upto)
  if #gone > 0 then
    redis.call('HDEL', records, unpack(gone))
    redis.call('ZREMRANGEBYSCORE', index, '-inf', upto)
  end
end
-- Append member, record pairs to `out` for the `members` that have a field in hash `records`.
local function add_records(out, records, members)
  for _, member in ipairs(members) do
    local record = redis.call('HGET', records, member)
    if record then
      out[#out + 1] = member
      out[#out + 1] = record
    end
  end
  return out
end
-- A node group silent for more than `quiet` seconds (none of its nodes could write: the
-- store was down or cut off, or the whole fleet stopped) counts that silence against
-- none of them: every heartbeat expiry in the zsets `expiries` still running when the
-- silence began moves on by its length, so live nodes are not taken for dead (and
-- reaped) before they could beat again. Hash `pulse_key` holds the group's last write.
local function resume(pulse_key, expiries, now, quiet, keep)
  local pulse = tonumber(redis.call('HGET', pulse_key, 'at'))
  if pulse and now - pulse > quiet then
    local silence = now - pulse
    for _, zset in ipairs(expiries) do
      local running = redis.call('ZRANGEBYSCORE', zset, '(' .. fmt(pulse), '+inf', 'WITHSCORES')
      for i = 1, #running, 2 do
        redis.call('ZADD', zset, tonumber(running[i + 1]) + silence, running[i])
      end
    end
  end
  redis.call('HSET', pulse_key, 'at', fmt(now))
  expire_at(pulse_key, now + keep)
end
