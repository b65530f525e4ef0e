-- Not a store operation: the atomic pop of snakepit_celery.transport.redis (kombu's format).
if redis.replicate_commands then redis.replicate_commands() end
-- KEYS: kombu's unacked hash, its unacked_index zset, the queue lists in the order BRPOP
--       would take them, then the bell lists of those queues
-- ARGV: number of queue lists, then delivery tags whose acknowledgement rides on this pop
--       (removed from the unacked records first: an ack costs no round trip of its own)
-- Pop the next message (RPOP, like BRPOP) and write kombu's unacknowledged record of it
-- in the same atomic step, so a consumer that dies right after holds nothing only it
-- knows: the message is restored from the unacked hash like any other.
-- Returns {queue key, message, recorded (1/0)}; nil when every queue is empty (their bells,
-- rung for messages already taken, are emptied then).
local last = 2 + tonumber(ARGV[1])
if #ARGV > 1 then
  redis.call('ZREM', KEYS[2], unpack(ARGV, 2))
  redis.call('HDEL', KEYS[1], unpack(ARGV, 2))
end
for i = 3, last do
  local item = redis.call('RPOP', KEYS[i])
  if item then
    local ok, message = pcall(cjson.decode, item)
    local properties = ok and type(message) == 'table' and message['properties']
    local tag = type(properties) == 'table' and properties['delivery_tag']
    if type(tag) == 'string' then
      local info = type(properties['delivery_info']) == 'table' and properties['delivery_info'] or {}
      local exchange = type(info['exchange']) == 'string' and info['exchange'] or ''
      local routing_key = type(info['routing_key']) == 'string' and info['routing_key'] or ''
      local t = redis.call('TIME')
      redis.call('ZADD', KEYS[2], tonumber(t[1]) + tonumber(t[2]) / 1000000, tag)
      redis.call('HSET', KEYS[1], tag,
        '[' .. item .. ', ' .. cjson.encode(exchange) .. ', ' .. cjson.encode(routing_key) .. ']')
      return {KEYS[i], item, 1}
    end
    return {KEYS[i], item, 0}
  end
end
if #KEYS > last then
  redis.call('DEL', unpack(KEYS, last + 1))
end
return nil
