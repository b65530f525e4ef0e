-- KEYS: task ledger hash   ARGV: -   (no writes)
-- -> nil, or {starts, finishes, crashes, running_on while its lease is live, else nil,
--    released: 1 while a node's give-back mark waits for the next delivery,
--    held_for: seconds since running_on took or renewed its lease, while it is live}
local h = redis.call('HMGET', KEYS[1], 'starts', 'finishes', 'crashes', 'running_on', 'lease_until',
  'released', 'lease_at')
if not (h[1] or h[2] or h[3] or h[4] or h[6]) then
  return false
end
local running = false
local held_for = false
local now = store_now()
if h[4] and (tonumber(h[5]) or 0) > now then
  running = h[4]
  held_for = fmt(now - (tonumber(h[7]) or 0))
end
local released = 0
if h[6] then
  released = 1
end
return {tonumber(h[1]) or 0, tonumber(h[2]) or 0, tonumber(h[3]) or 0, running, released,
  held_for}
