-- fonana-realtime: publish one event with positions (PROTOCOL.md 7, docs/PUBLISHING.md).
--
-- One call = one publication: for every stream of the route it assigns the next offset,
-- appends the envelope to the stream's history and PUBLISHes the envelope to the
-- stream's topic, all in one atomic step, so two hosts publishing to one channel at once
-- still produce one order, and the live order is the offset order.
--
-- KEYS  per stream i of the route, in the route's order:
--         KEYS[2i-1] = <prefix>{<stream>}:m   meta hash: e = epoch, t = top offset
--         KEYS[2i]   = <prefix>{<stream>}:h   history list of envelopes
-- ARGV  [1] the event: a JSON object with a string "type" (the bytes are kept as given)
--       [2] a unique publication id (1..64 of [A-Za-z0-9_.:-]), or '' to derive one
--       [3] history size (WS_HISTORY_SIZE, 0 = no history, positions only)
--       [4] history seconds (WS_HISTORY_SECONDS)   [5] meta seconds (WS_HISTORY_META_SECONDS)
--       [6] the key prefix (REDIS_PREFIX, e.g. fonana:rt:)
--       [7..] the topics: channel:<channelKey> or user:<userId>, one per stream; a
--             topic written `^topic` is only listed in the envelope: another call of the
--             same publication writes its stream (Redis Cluster, a route over several
--             slots; it has no keys here)
-- Reply {receivers, id, ts, epoch_1, offset_1, epoch_2, offset_2, ...}
--
-- The envelope (the same bytes to every topic and into every history):
--   {"event":E,"id":I,"topics":[...],"pos":{"post_p1":["EPOCH",7],...},"ts":T}
-- built by concatenation: E is never decoded-and-re-encoded (cjson would mangle numbers).
--
-- Epoch: created when a stream's meta is absent (first use, expired after the meta
-- seconds, or a Redis that lost its data), from Redis TIME, so a stream that lost its
-- offsets never reuses an old epoch: old offsets are never matched with new events.
-- Also when the meta was last written by another Redis process (its `r`, the run id):
-- a replica promoted by a failover may lack the last writes the old master acknowledged
-- (replication is asynchronous) and would give their offsets to other events.
--
-- Redis Cluster: every key is hash-tagged per stream, so one stream's meta and history
-- share a slot, and so does its sharded channel. A call's keys must all be in one slot
-- (Redis refuses others with CROSSSLOT): a route whose streams live in several slots is
-- one call per slot (redis_history.py), each an atomic publication of its own streams
-- with its own id, its envelope listing the whole route (the other calls' topics as
-- `^topic`), so a worker delivers a later call only to connections no earlier one reached. On one Redis or Sentinel the whole route is one call: that is what
-- makes a union's copies carry every stream's position and travel back to back.

local written, listed = {}, {}     -- the topics whose streams this call writes; all listed
for j = 7, #ARGV do
  local topic = ARGV[j]
  if string.sub(topic, 1, 1) == '^' then
    topic = string.sub(topic, 2)
  else
    written[#written + 1] = topic
  end
  if not (string.match(topic, '^channel:[%w_%-]+$') or string.match(topic, '^user:[%w_%-]+$')) then
    return redis.error_reply('ERR fonana: bad topic ' .. string.sub(topic, 1, 200))
  end
  listed[#listed + 1] = '"' .. topic .. '"'
end
local n = #written
if n < 1 or #KEYS ~= 2 * n then
  return redis.error_reply('ERR fonana: need 2 keys per topic and at least one topic')
end
if #listed > 64 then      -- wire.MAX_ENVELOPE_TOPICS: a longer list would not be read as a union
  return redis.error_reply('ERR fonana: at most 64 topics')
end
local payload, id, prefix = ARGV[1], ARGV[2], ARGV[6]
local size, hist_ttl, meta_ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if not size or size < 0 or not hist_ttl or hist_ttl < 1 or not meta_ttl or meta_ttl < 1 then
  return redis.error_reply('ERR fonana: bad size or ttl')
end
if string.sub(payload, 1, 1) ~= '{' then
  return redis.error_reply('ERR fonana: event must be a JSON object')
end
-- Decoded only to check it; the reply uses the original bytes.
local ok, decoded = pcall(cjson.decode, payload)
if not ok or type(decoded) ~= 'table' or type(decoded['type']) ~= 'string' or decoded['type'] == '' then
  return redis.error_reply('ERR fonana: event must be a JSON object with a string type')
end
if id ~= '' and (#id > 64 or not string.match(id, '^[%w_.:%-]+$')) then
  return redis.error_reply('ERR fonana: id must be 1..64 of [A-Za-z0-9_.:-]')
end

local now = redis.call('TIME')
local ts = now[1] .. '.' .. string.format('%06d', tonumber(now[2]))
local fresh_epoch = string.format('%x%05x', tonumber(now[1]), tonumber(now[2]))

local streams, epochs, offsets, seen = {}, {}, {}, {}
for i = 1, n do
  local topic = written[i]           -- checked above: channel:<key> or user:<id>
  local stream = string.match(topic, '^channel:([%w_%-]+)$')
  if not stream then
    stream = 'user_' .. string.match(topic, '^user:([%w_%-]+)$')
  end
  if seen[stream] then
    return redis.error_reply('ERR fonana: topic listed twice')
  end
  seen[stream] = true
  local meta, hist = KEYS[2 * i - 1], KEYS[2 * i]
  if meta ~= prefix .. '{' .. stream .. '}:m' or hist ~= prefix .. '{' .. stream .. '}:h' then
    return redis.error_reply('ERR fonana: keys do not match topic ' .. string.sub(topic, 1, 200))
  end
  streams[i] = stream
end

-- The term: this Redis process's run id (a promoted replica, a restarted master: another).
local server = redis.call('INFO', 'server')
local term = string.match(server, 'run_id:(%x+)')
local sharded = string.find(server, 'redis_mode:cluster', 1, true) ~= nil

for i = 1, n do
  local meta, hist = KEYS[2 * i - 1], KEYS[2 * i]
  local known = redis.call('HMGET', meta, 'e', 'r')
  local epoch, writer = known[1], known[2]
  if not epoch or (writer and writer ~= term) then
    epoch = fresh_epoch
    redis.call('DEL', hist)         -- history of a lost epoch must never be served
    redis.call('HSET', meta, 'e', epoch, 't', 0, 'r', term)
  elseif not writer then
    redis.call('HSET', meta, 'r', term)     -- a meta from before terms adopts this one
  end
  epochs[i] = epoch
  offsets[i] = redis.call('HINCRBY', meta, 't', 1)
  redis.call('EXPIRE', meta, meta_ttl)
end

if id == '' then
  id = string.sub(redis.sha1hex(streams[1] .. ':' .. epochs[1] .. ':' .. offsets[1]), 1, 32)
end

local pos = {}
for i = 1, n do
  pos[i] = '"' .. streams[i] .. '":["' .. epochs[i] .. '",' .. offsets[i] .. ']'
end
local body = '{"event":' .. payload .. ',"id":"' .. id .. '","topics":[' .. table.concat(listed, ',')
  .. '],"pos":{' .. table.concat(pos, ',') .. '},"ts":' .. ts .. '}'

for i = 1, n do
  local hist = KEYS[2 * i]
  if size > 0 then
    redis.call('RPUSH', hist, body)
    redis.call('LTRIM', hist, -size, -1)
    redis.call('EXPIRE', hist, hist_ttl)
  end
end

-- Redis Cluster: sharded pub/sub, on the stream's own channel `<prefix>{<stream>}` (the
-- slot of its keys, so Redis lets the script publish there): the message travels only to
-- the shard that owns it. Elsewhere the classic channel `<prefix><topic>`.
local receivers = 0
if sharded then
  for i = 1, n do
    receivers = receivers + redis.call('SPUBLISH', prefix .. '{' .. streams[i] .. '}', body)
  end
else
  for i = 1, n do
    receivers = receivers + redis.call('PUBLISH', prefix .. written[i], body)
  end
end

local reply = {receivers, id, ts}
for i = 1, n do
  reply[#reply + 1] = epochs[i]
  reply[#reply + 1] = offsets[i]
end
return reply
