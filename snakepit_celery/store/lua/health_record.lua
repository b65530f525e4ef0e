-- KEYS: pool meta hash, crashes zset (seq|worker -> time), by-worker zset (worker|seq, lex)
-- ARGV: worker_id, window, max_entries, meta_ttl_ms
-- -> {total, crashes_in_window, worker crashes in window, now}
local now = store_now()
local worker = ARGV[1]
local window = tonumber(ARGV[2])
local cap = math.max(1, tonumber(ARGV[3]))
local seq = string.format('%012d', redis.call('HINCRBY', KEYS[1], 'seq', 1))
local total = redis.call('HINCRBY', KEYS[1], 'total', 1)
redis.call('ZADD', KEYS[2], now, seq .. '|' .. worker)
redis.call('ZADD', KEYS[3], 0, worker .. '|' .. seq)
local function drop(members)
  for _, m in ipairs(members) do
    local sep = string.find(m, '|', 1, true)
    redis.call('ZREM', KEYS[3], string.sub(m, sep + 1) .. '|' .. string.sub(m, 1, sep - 1))
  end
end
local cutoff = now - window
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff)
if #old > 0 then
  drop(old)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
end
local excess = redis.call('ZCARD', KEYS[2]) - cap
if excess > 0 then
  drop(redis.call('ZRANGE', KEYS[2], 0, excess - 1))
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, excess - 1)
end
local mine = 0
local prefix = worker .. '|'
for _, m in ipairs(redis.call('ZRANGEBYLEX', KEYS[3], '[' .. prefix, '[' .. prefix .. '\255')) do
  if string.match(string.sub(m, #prefix + 1), '^%d+$') then
    mine = mine + 1
  end
end
local window_ms = math.ceil(window * 2000) + 1000
redis.call('PEXPIRE', KEYS[2], window_ms)
redis.call('PEXPIRE', KEYS[3], window_ms)
redis.call('PEXPIRE', KEYS[1], math.max(window_ms, tonumber(ARGV[4])))
return {total, redis.call('ZCARD', KEYS[2]), mine, fmt(now)}
