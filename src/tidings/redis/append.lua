-- tidings: append one event to a topic, atomically.
--
-- Assigns the event the next offset of the topic's epoch, stores it in the
-- topic's stream (trimmed to exactly MAXLEN events), refreshes the idle expiry,
-- remembers the idempotency key and publishes the event on the topic's channel:
-- all in one script, so no two appends (from any number of nodes) can ever get
-- the same offset or be published out of order.
--
-- KEYS[1]  meta hash: epoch, last (offset of the newest event), created (ms)
-- KEYS[2]  stream: one entry per retained event, ID "<offset>-0",
--          fields d (data) and, when the event has a type, e (type)
-- KEYS[3]  idempotency record: the position "epoch.offset" of the first
--          append made with this key
-- ARGV[1]  data
-- ARGV[2]  event type ("" when ARGV[3] is "0")
-- ARGV[3]  "1" when the event has a type, "0" when not
-- ARGV[4]  a random epoch, used only if the topic has none (a new generation)
-- ARGV[5]  MAXLEN: events retained
-- ARGV[6]  idle expiry of the topic in ms, "0" for none
-- ARGV[7]  how long the idempotency record is kept, in ms
-- ARGV[8]  the topic's PUB/SUB channel
--
-- Returns {1, position} when the event was stored, {0, position} when the key
-- was seen before (nothing stored; position is the first append's).
--
-- The message published is "epoch.offset\n<type length or -1>\n<type><data>".

local meta, stream, record = KEYS[1], KEYS[2], KEYS[3]

local seen = redis.call('GET', record)
if seen then
  return {0, seen}
end

local epoch = redis.call('HGET', meta, 'epoch')
local last = 0
if epoch then
  last = tonumber(redis.call('HGET', meta, 'last')) or 0
else
  -- A new generation.  Whatever is left of an earlier one goes, so that no
  -- position of it can be mistaken for one of this epoch.
  epoch = ARGV[4]
  local now = redis.call('TIME')
  local created = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'epoch', epoch, 'last', '0', 'created',
             string.format('%d', created))
end

local offset = string.format('%d', last + 1)
-- The stream first: if XADD fails, nothing has changed.
if ARGV[3] == '1' then
  redis.call('XADD', stream, 'MAXLEN', ARGV[5], offset .. '-0', 'd', ARGV[1], 'e', ARGV[2])
else
  redis.call('XADD', stream, 'MAXLEN', ARGV[5], offset .. '-0', 'd', ARGV[1])
end
redis.call('HSET', meta, 'last', offset)
if ARGV[6] ~= '0' then
  redis.call('PEXPIRE', meta, ARGV[6])
  redis.call('PEXPIRE', stream, ARGV[6])
end

local position = epoch .. '.' .. offset
redis.call('SET', record, position, 'PX', ARGV[7])

local head
if ARGV[3] == '1' then
  head = position .. '\n' .. string.format('%d', #ARGV[2]) .. '\n' .. ARGV[2]
else
  head = position .. '\n-1\n'
end
redis.call('PUBLISH', ARGV[8], head .. ARGV[1])
return {1, position}
