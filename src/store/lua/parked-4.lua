--[[ parked-4: reserve, release or drop a task's parked images, keeping the parked-bytes counter exact.
  KEYS[1] the task's parked images   KEYS[2] parked-bytes counter   KEYS[3] parked-pending set
  KEYS[4] the task hash
  ARGV[1] 'reserve' | 'resize' | 'release' | 'drop'   ARGV[2] task id
  reserve (ARGV[3] bytes, ARGV[4] cap, ARGV[5] now): counts the bytes and marks them pending, unless that
    would pass the cap; returns 1, or 0 (nothing reserved). Running it twice reserves once.
  resize (same arguments): what is reserved becomes ARGV[3] bytes (a streamed create reserves an estimate before
    its images are in, then their exact size), unless growing it would pass the cap; reserves when nothing is;
    returns 1, or 0 (unchanged). An absolute size, so running it twice changes it once.
  release: frees the images unless a stored task owns them (a create that may have run
    late); returns 1 when freed.
  drop: frees the images whoever owns them (upstream has the task, or it ended); returns 1 when freed.
  The counter is decremented by what was reserved, once: a second release or drop finds nothing. ]]
local parked, counter, pending = KEYS[1], KEYS[2], KEYS[3]
local op, id = ARGV[1], ARGV[2]

if op == 'reserve' then
  if redis.call('HEXISTS', parked, '#bytes') == 1 then return 1 end
  local bytes = tonumber(ARGV[3])
  local total = tonumber(redis.call('GET', counter) or '0')
  if total + bytes > tonumber(ARGV[4]) then return 0 end
  redis.call('INCRBY', counter, bytes)
  redis.call('HSET', parked, '#bytes', bytes)
  redis.call('ZADD', pending, ARGV[5], id)
  return 1
end
if op == 'resize' then
  local old = tonumber(redis.call('HGET', parked, '#bytes') or '0')
  local bytes = tonumber(ARGV[3])
  local total = tonumber(redis.call('GET', counter) or '0')
  if bytes > old and total - old + bytes > tonumber(ARGV[4]) then return 0 end
  redis.call('INCRBY', counter, bytes - old)
  redis.call('HSET', parked, '#bytes', bytes)
  if redis.call('EXISTS', KEYS[4]) == 0 then redis.call('ZADD', pending, 'NX', ARGV[5], id) end
  return 1
end
if op == 'release' and redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('ZREM', pending, id)
  return 0
end
local bytes = redis.call('HGET', parked, '#bytes')
redis.call('ZREM', pending, id)
if not bytes then
  redis.call('DEL', parked)
  return 0
end
redis.call('DEL', parked)
redis.call('DECRBY', counter, bytes)
return 1
