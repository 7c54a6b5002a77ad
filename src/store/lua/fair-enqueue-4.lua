--[[ fair-enqueue-4: puts a queued task in its caller's line for a submit slot (src/jobs/fair.ts), once.
  KEYS[1] ready (sorted set, every score 0, members `<caller> <at, 15 digits> <task id>`: lexical order is by
          caller, then by arrival)   KEYS[2] queued (hash task id → its member)
  KEYS[3] callers (hash caller → tasks waiting)
  KEYS[4] slots (sorted set of released task ids)
  ARGV[1] MessagePack map: task, caller, at (Unix ms, zero-padded to 15 digits)
  Returns 1 when queued, 0 when the task is already waiting (a repeated submit is a no-op), 2 when it holds a slot
  (its job may be lost: a replica died between the release and the add; the caller adds it). ]]
local a = cmsgpack.unpack(ARGV[1])
if redis.call('HEXISTS', KEYS[2], a.task) == 1 then return 0 end
if redis.call('ZSCORE', KEYS[4], a.task) then return 2 end
local member = a.caller .. ' ' .. a.at .. ' ' .. a.task
redis.call('ZADD', KEYS[1], 0, member)
redis.call('HSET', KEYS[2], a.task, member)
redis.call('HINCRBY', KEYS[3], a.caller, 1)
return 1
