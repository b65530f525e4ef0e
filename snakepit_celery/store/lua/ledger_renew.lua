-- KEYS: task ledger hash   ARGV: worker_id, lease   -> 1 when the worker holds the task
if redis.call('HGET', KEYS[1], 'running_on') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'lease_until', fmt(store_now() + tonumber(ARGV[2])))
return 1
