--[[ callback-2: what a callback needs from Redis, in one command: the callback counted in its task's minute and
  the task's hash. A duplicate callback (CometAPI repeats itself) needs nothing else. Safe to run late or twice:
  the count only errs high for a minute.
  KEYS[1] task hash, KEYS[2] the task's callback counter
  ARGV[1] the counting window, seconds
  Returns { count, { field, value, ... } } (an empty list when there is no such task). ]]
local seen = redis.call('INCR', KEYS[2])
-- The window starts with the first callback: refreshing it on every call would never let it end.
if seen == 1 then redis.call('EXPIRE', KEYS[2], ARGV[1]) end
return { seen, redis.call('HGETALL', KEYS[1]) }
