--[[ callback-2: what a callback needs from Redis, in one command: the callback counted in its task's minute and
  the few fields of the task a callback decides by (not the whole hash: most callbacks are duplicates, and the
  request and result are most of its bytes). Safe to run late or twice: the count only errs high for a minute.
  KEYS[1] task hash, KEYS[2] the task's callback counter
  ARGV[1] the counting window, seconds
  Returns { count, id, status, external_task_id, upstream, error } (id false when there is no such task). ]]
local seen = redis.call('INCR', KEYS[2])
-- The window starts with the first callback: refreshing it on every call would never let it end.
if seen == 1 then redis.call('EXPIRE', KEYS[2], ARGV[1]) end
local f = redis.call('HMGET', KEYS[1], 'id', 'status', 'external_task_id', 'upstream', 'error')
return { seen, f[1], f[2], f[3], f[4], f[5] }
