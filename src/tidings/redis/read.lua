-- tidings: a consistent snapshot of a topic, and the events after a position.
--
-- Reads the meta hash and, in the same atomic step, the page of the stream that
-- the caller asked for, so that the epoch checked and the events returned
-- belong together.  Decisions (replay or reset, and why) are the caller's.
--
-- KEYS[1]  meta hash: epoch, last, created (see append.lua)
-- KEYS[2]  stream
-- ARGV[1]  read only in this epoch; "" for whichever epoch is current
-- ARGV[2]  read the events after this offset; "-1" for all retained
-- ARGV[3]  at most this many events; "0" for the state only
--
-- Returns {0, now} when the topic does not exist, else
-- {1, now, epoch, first, last, created, entries} where first is the offset of
-- the earliest retained event (last + 1 when none is), entries are XRANGE
-- entries (empty unless the position asked is in the epoch and retained), and
-- now is the server's clock in ms.

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'last', 'created')
local epoch = meta[1]
if not epoch then
  return {0, now}
end
local last = tonumber(meta[2]) or 0
local created = tonumber(meta[3]) or 0
local first = last - redis.call('XLEN', KEYS[2]) + 1

local entries = {}
local limit = tonumber(ARGV[3])
if limit > 0 and (ARGV[1] == '' or ARGV[1] == epoch) then
  local after = tonumber(ARGV[2])
  if after < 0 then
    after = first - 1
  end
  if after >= first - 1 and after < last then
    entries = redis.call('XRANGE', KEYS[2], string.format('%d-0', after + 1), '+',
                         'COUNT', limit)
  end
end
return {1, now, epoch, first, last, created, entries}
