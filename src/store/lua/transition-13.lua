--[[ transition-13: compare-and-set one task change and append its event, atomically.
  The caller read the task at sequence `expected` in status `from` and computed the change; if either moved
  since, nothing is written (the caller re-reads and decides again). So a re-sent or late script is a no-op.
  KEYS[1] task hash   KEYS[2] task event list   KEYS[3] event stream
  KEYS[4] index caller:<from>   KEYS[5] index caller:<to>   KEYS[6] index *:<from>   KEYS[7] index *:<to>
  KEYS[8] open set   KEYS[9] stored set   KEYS[10] copying set (succeeded, result neither stored nor given up)
  KEYS[11] index caller:attention   KEYS[12] index *:attention   KEYS[13] ended set (terminal tasks by when)
  ARGV[1] MessagePack map: expected, from, to, fields {name = value}, event (JSON, '' = no event), event_type,
          event_id, created_at, maxlen, terminal (bool), now, guard (a field that must be empty, or ''),
          stored (a score to add the task to the stored set with, 'remove', or nil), copying (the same, for the
          copying set: the result copy's work list, kept with the status so the copy sweep can never miss a task),
          watch (bool: a terminal task that reconciliation still watches stays in the open set),
          attention ('set' files the task under the attention indexes by created_at, 'remove' takes it off, or nil),
          ended (when the task became terminal, with this change: its score in the ended set, retention's work list)
  Returns the new sequence, 0 when stale, -1 when the task does not exist, -2 when the guard field is set. ]]
local a = cmsgpack.unpack(ARGV[1])
local taskKey = KEYS[1]
local current = redis.call('HMGET', taskKey, 'sequence', 'status', 'id', 'caller')
if not current[1] then return -1 end
if tonumber(current[1]) ~= tonumber(a.expected) or current[2] ~= a.from then return 0 end
if a.guard ~= '' then
  local guard = redis.call('HGET', taskKey, a.guard)
  if guard and guard ~= '' then return -2 end
end

local seq = tonumber(current[1])
local flat = {}
for k, v in pairs(a.fields) do flat[#flat + 1] = k; flat[#flat + 1] = v end
if a.event ~= '' then
  seq = seq + 1
  flat[#flat + 1] = 'sequence'; flat[#flat + 1] = tostring(seq)
end
flat[#flat + 1] = 'status'; flat[#flat + 1] = a.to
redis.call('HSET', taskKey, unpack(flat))

if a.event ~= '' then
  redis.call('RPUSH', KEYS[2], a.event)
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', a.maxlen, '*', 'type', a.event_type, 'id', a.event_id,
    'task_id', current[3], 'caller', current[4], 'sequence', tostring(seq), 'data', a.event)
  end
if a.from ~= a.to then
  redis.call('ZREM', KEYS[4], current[3]); redis.call('ZADD', KEYS[5], a.created_at, current[3])
  redis.call('ZREM', KEYS[6], current[3]); redis.call('ZADD', KEYS[7], a.created_at, current[3])
end
if a.terminal and not a.watch then
  redis.call('ZREM', KEYS[8], current[3])
else
  redis.call('ZADD', KEYS[8], a.now, current[3])
end
if a.stored == 'remove' then
  redis.call('ZREM', KEYS[9], current[3])
elseif a.stored then
  redis.call('ZADD', KEYS[9], a.stored, current[3])
end
if a.copying == 'remove' then
  redis.call('ZREM', KEYS[10], current[3])
elseif a.copying then
  redis.call('ZADD', KEYS[10], a.copying, current[3])
end
if a.attention == 'remove' then
  redis.call('ZREM', KEYS[11], current[3]); redis.call('ZREM', KEYS[12], current[3])
elseif a.attention == 'set' then
  redis.call('ZADD', KEYS[11], a.created_at, current[3]); redis.call('ZADD', KEYS[12], a.created_at, current[3])
end
if a.ended then redis.call('ZADD', KEYS[13], a.ended, current[3]) end
return seq
