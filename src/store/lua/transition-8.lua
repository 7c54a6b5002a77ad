--[[ transition-8: compare-and-set one task change and append its event, atomically.
  The caller read the task at sequence ARGV[1] in status ARGV[2] and computed the change; if either moved
  since, nothing is written (the caller re-reads and decides again). So a re-sent EVALSHA is a no-op.
  KEYS[1] task hash   KEYS[2] task event list   KEYS[3] event stream
  KEYS[4] index caller:<from>   KEYS[5] index caller:<to>   KEYS[6] index *:<from>   KEYS[7] index *:<to>   KEYS[8] open set
  ARGV[1] expected sequence   ARGV[2] expected status (from)   ARGV[3] new status (to)
  ARGV[4] fields to set, JSON object of strings   ARGV[5] event JSON ('' = change without an event)
  ARGV[6] created_at ms (index score)   ARGV[7] stream MAXLEN   ARGV[8] '1' when `to` is terminal
  ARGV[9] now ms   ARGV[10] live channel   ARGV[11] a field that must be empty for the change to apply ('' = none)
  ARGV[12] event type for the stream ('' = 'video.' .. new status)
  Returns: the new sequence, 0 when stale (sequence or status moved), -1 when the task does not exist,
  -2 when ARGV[11]'s field is set. ]]
local taskKey, eventsKey, streamKey = KEYS[1], KEYS[2], KEYS[3]
local current = redis.call('HMGET', taskKey, 'sequence', 'status', 'id', 'caller')
if not current[1] then return -1 end
if tonumber(current[1]) ~= tonumber(ARGV[1]) or current[2] ~= ARGV[2] then return 0 end
if ARGV[11] ~= '' then
  local guard = redis.call('HGET', taskKey, ARGV[11])
  if guard and guard ~= '' then return -2 end
end

local seq = tonumber(current[1])
local fields = cjson.decode(ARGV[4])
local flat = {}
for k, v in pairs(fields) do flat[#flat + 1] = k; flat[#flat + 1] = v end
if ARGV[5] ~= '' then
  seq = seq + 1
  flat[#flat + 1] = 'sequence'; flat[#flat + 1] = tostring(seq)
end
flat[#flat + 1] = 'status'; flat[#flat + 1] = ARGV[3]
redis.call('HSET', taskKey, unpack(flat))

if ARGV[5] ~= '' then
  redis.call('RPUSH', eventsKey, ARGV[5])
  redis.call('XADD', streamKey, 'MAXLEN', '~', ARGV[7], '*', 'type', (ARGV[12] ~= '' and ARGV[12] or ('video.' .. ARGV[3])), 'task_id', current[3], 'caller', current[4], 'sequence', tostring(seq), 'data', ARGV[5])
  redis.call('PUBLISH', ARGV[10], ARGV[5])
end
if ARGV[2] ~= ARGV[3] then
  redis.call('ZREM', KEYS[4], current[3]); redis.call('ZADD', KEYS[5], ARGV[6], current[3])
  redis.call('ZREM', KEYS[6], current[3]); redis.call('ZADD', KEYS[7], ARGV[6], current[3])
end
if ARGV[8] == '1' then
  redis.call('ZREM', KEYS[8], current[3])
else
  redis.call('ZADD', KEYS[8], ARGV[9], current[3])
end
return seq
