--[[ forget-18: remove one finished task past its retention, with every key and index entry that is its own.
  Atomic, so no index ever names a task that is gone: the hash, its lists and every index entry leave together.
  The script is the one judge of "may it go": terminal, not held, not watched by reconciliation (open set), no
  result copy pending (copying set), ended at or before `before`. Safe to run late or twice, on two replicas at
  once: a second run finds the task gone and only makes sure the work list no longer names it.
  KEYS[1] task hash   KEYS[2] task event list   KEYS[3] parked images
  KEYS[4] the task's delivery ids (set)   KEYS[5] index caller:*   KEYS[6] index caller:<status>
  KEYS[7] index *:*   KEYS[8] index *:<status>   KEYS[9] index caller:attention   KEYS[10] index *:attention
  KEYS[11] open set   KEYS[12] stored set   KEYS[13] copying set   KEYS[14] ended set
  KEYS[15] reference key (the task key again when none)   KEYS[16] idempotency record (the task key again when none)
  KEYS[17] parked-bytes counter   KEYS[18] parked-pending set
  ARGV[1] MessagePack map: id, status (as the caller read it), terminal (the terminal statuses), before (ms),
          check (bool: only say whether it may go, change nothing)
  Returns 1 removed (or, with check, it may go), 0 gone already, -1 kept for now (held, watched, copying, too
  recent, not terminal), -2 it still has deliveries (delete them first), -3 its status moved since it was read. ]]
local a = cmsgpack.unpack(ARGV[1])
local taskKey, id = KEYS[1], a.id
local row = redis.call('HMGET', taskKey, 'status', 'attention')
if not row[1] then
  redis.call('ZREM', KEYS[14], id)
  return 0
end
if row[1] ~= a.status then return -3 end
local terminal = false
for _, s in ipairs(a.terminal) do if s == row[1] then terminal = true end end
if not terminal then
  -- Nothing leaves a terminal status for a non-terminal one; an entry like this is stale, not work.
  redis.call('ZREM', KEYS[14], id)
  return -1
end
local ended = redis.call('ZSCORE', KEYS[14], id)
if (row[2] and row[2] ~= '') or redis.call('ZSCORE', KEYS[11], id) or redis.call('ZSCORE', KEYS[13], id)
  or not ended or tonumber(ended) > tonumber(a.before) then
  return -1
end
if redis.call('SCARD', KEYS[4]) > 0 then return -2 end
if a.check then return 1 end

local bytes = redis.call('HGET', KEYS[3], '#bytes')
if bytes then redis.call('DECRBY', KEYS[17], bytes) end
redis.call('DEL', taskKey, KEYS[2], KEYS[3], KEYS[4])
for i = 5, 14 do redis.call('ZREM', KEYS[i], id) end
redis.call('ZREM', KEYS[18], id)
if KEYS[15] ~= taskKey and redis.call('GET', KEYS[15]) == id then redis.call('DEL', KEYS[15]) end
if KEYS[16] ~= taskKey and redis.call('HGET', KEYS[16], 'task_id') == id then redis.call('DEL', KEYS[16]) end
return 1
