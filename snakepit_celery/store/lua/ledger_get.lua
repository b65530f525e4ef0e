-- KEYS: task ledger hash   ARGV: -   (no writes)
-- -> nil, or {starts, finishes, crashes, running_on while its lease is live, else nil,
--    released: 1 while a node's give-back mark waits for the next delivery}
local h = redis.call('HMGET', KEYS[1], 'starts', 'finishes', 'crashes', 'running_on', 'lease_until',
  'released')
if not (h[1] or h[2] or h[3] or h[6]) then
  return false
end
local running = false
if h[4] and (tonumber(h[5]) or 0) > store_now() then
  running = h[4]
end
local released = 0
if h[6] then
  released = 1
end
return {tonumber(h[1]) or 0, tonumber(h[2]) or 0, tonumber(h[3]) or 0, running, released}
