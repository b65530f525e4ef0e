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
