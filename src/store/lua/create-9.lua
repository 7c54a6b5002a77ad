--[[ create-9: store a new task with its first event, its reference and its idempotency record, atomically.
  KEYS[1] task hash            KEYS[2] task event list     KEYS[3] event stream
  KEYS[4] index caller:*       KEYS[5] index caller:queued KEYS[6] index *:*   KEYS[7] index *:queued
  KEYS[8] reference key (or the task key again when there is no reference)   KEYS[9] open set
  ARGV[1] task fields as JSON object of strings   ARGV[2] event JSON   ARGV[3] created_at ms (index score)
  ARGV[4] task id   ARGV[5] caller   ARGV[6] stream MAXLEN   ARGV[7] 1 when KEYS[8] is a real reference key
  ARGV[8] live channel
  Returns: {'ok', id} or {'reference', existing id}. Running it twice returns the existing task. ]]
local taskKey, eventsKey, streamKey = KEYS[1], KEYS[2], KEYS[3]
local id, caller = ARGV[4], ARGV[5]

if ARGV[7] == '1' then
  local existing = redis.call('GET', KEYS[8])
  if existing then return {'reference', existing} end
end
if redis.call('EXISTS', taskKey) == 1 then return {'ok', id} end

local fields = cjson.decode(ARGV[1])
local flat = {}
for k, v in pairs(fields) do flat[#flat + 1] = k; flat[#flat + 1] = v end
redis.call('HSET', taskKey, unpack(flat))
redis.call('RPUSH', eventsKey, ARGV[2])
redis.call('XADD', streamKey, 'MAXLEN', '~', ARGV[6], '*', 'type', 'video.queued', 'task_id', id, 'caller', caller, 'sequence', '1', 'data', ARGV[2])
for i = 4, 7 do redis.call('ZADD', KEYS[i], ARGV[3], id) end
if ARGV[7] == '1' then redis.call('SET', KEYS[8], id) end
redis.call('ZADD', KEYS[9], ARGV[3], id)
redis.call('PUBLISH', ARGV[8], ARGV[2])
return {'ok', id}
