--[[ create-16: store a new task with its first event, indexes, reference and idempotency record, atomically.
  Safe to run late or twice: a request's Idempotency-Key record and its task are written together, so whichever
  of a late create and its retry runs second finds the record and returns the first task; a re-sent script
  finds its own task. Any outcome but `created` frees the images this request parked.
  KEYS[1] task hash   KEYS[2] task event list   KEYS[3] event stream
  KEYS[4] index caller:*   KEYS[5] index caller:queued   KEYS[6] index *:*   KEYS[7] index *:queued
  KEYS[8] reference key (the task key again when there is none)   KEYS[9] open set
  KEYS[10] idempotency record (the task key again when there is none)
  KEYS[11] this request's parked images   KEYS[12] parked-bytes counter   KEYS[13] parked-pending set
  KEYS[14] index caller:submitted   KEYS[15] index caller:processing   KEYS[16] the caller's usage hash of the day
  ARGV[1] MessagePack map: id, caller, created_at, fields {name = value}, event (JSON), event_id, maxlen,
          reference (bool), idempotency {fingerprint, ttl_ms} or nil,
          limits {max_active, daily_units, units, usage_ttl_ms} (0 = no limit; units are always charged)
  Per-caller limits are checked after the key and the reference, so a replay is never refused by a limit, and in
  the same step as the write, so concurrent creates on any replica cannot pass a limit together. Active tasks
  are the caller's queued, submitted and processing indexes; the units charged are kept on the task (`units`)
  so that a cancel before it is sent gives back exactly those (refund-2).
  Returns {outcome, task id}: created | existing (the key's task) | mismatch (the key's task, another body)
  | reference (the task holding the reference) | limit (the limit's CALLER_LIMITS name in place of the id). ]]
local a = cmsgpack.unpack(ARGV[1])
local taskKey, parkedKey = KEYS[1], KEYS[11]

local function releaseParked ()
  local bytes = redis.call('HGET', parkedKey, '#bytes')
  if bytes then
    redis.call('DEL', parkedKey)
    redis.call('DECRBY', KEYS[12], bytes)
  end
  redis.call('ZREM', KEYS[13], a.id)
end

if redis.call('EXISTS', taskKey) == 1 then return {'created', a.id} end
if a.idempotency then
  local rec = redis.call('HMGET', KEYS[10], 'fingerprint', 'task_id')
  if rec[2] then
    releaseParked()
    if rec[1] ~= a.idempotency.fingerprint then return {'mismatch', rec[2]} end
    return {'existing', rec[2]}
  end
end
if a.reference then
  local holder = redis.call('GET', KEYS[8])
  if holder then
    releaseParked()
    return {'reference', holder}
  end
end

local lim = a.limits
if lim then
  local max = tonumber(lim.max_active)
  if max > 0 then
    local active = redis.call('ZCARD', KEYS[5]) + redis.call('ZCARD', KEYS[14]) + redis.call('ZCARD', KEYS[15])
    if active >= max then
      releaseParked()
      return {'limit', 'max_active_tasks'}
    end
  end
  local budget = tonumber(lim.daily_units)
  if budget > 0 then
    local used = tonumber(redis.call('HGET', KEYS[16], 'units') or '0')
    if used + tonumber(lim.units) > budget then
      releaseParked()
      return {'limit', 'daily_units'}
    end
  end
end

local flat = {}
for k, v in pairs(a.fields) do flat[#flat + 1] = k; flat[#flat + 1] = v end
redis.call('HSET', taskKey, unpack(flat))
redis.call('RPUSH', KEYS[2], a.event)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', a.maxlen, '*', 'type', 'video.queued', 'id', a.event_id,
  'task_id', a.id, 'caller', a.caller, 'sequence', '1', 'data', a.event)
for i = 4, 7 do redis.call('ZADD', KEYS[i], a.created_at, a.id) end
if a.reference then redis.call('SET', KEYS[8], a.id) end
if a.idempotency then
  redis.call('HSET', KEYS[10], 'fingerprint', a.idempotency.fingerprint, 'task_id', a.id)
  redis.call('PEXPIRE', KEYS[10], a.idempotency.ttl_ms)
end
redis.call('ZADD', KEYS[9], a.created_at, a.id)
redis.call('ZREM', KEYS[13], a.id)
if lim then
  redis.call('HSET', taskKey, 'units', lim.units)
  redis.call('HINCRBY', KEYS[16], 'tasks', 1)
  redis.call('HINCRBYFLOAT', KEYS[16], 'units', lim.units)
  redis.call('PEXPIRE', KEYS[16], lim.usage_ttl_ms)
end
return {'created', a.id}
