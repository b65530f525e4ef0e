-- KEYS: task ledger hash   ARGV: -   (no writes)
-- -> nil, or {starts, finishes, crashes, running_on while its lease is live, else nil}
local h = redis.call('HMGET', KEYS[1], 'starts', 'finishes', 'crashes', 'running_on', 'lease_until')
if not (h[1] or h[2] or h[3]) then
  return false
end
local running = false
if h[4] and (tonumber(h[5]) or 0) > store_now() then
  running = h[4]
end
return {tonumber(h[1]) or 0, tonumber(h[2]) or 0, tonumber(h[3]) or 0, running}
