--[[ withdraw-1: marks a task whose create answered 503 (to a caller without an Idempotency-Key) as withdrawn,
  unless its submit has started. A write, so it runs after a create script that was still on its way; the
  submit job and reconciliation cancel a withdrawn task instead of sending it upstream.
  KEYS[1] task hash
  Returns 1 when marked, 0 when there is no such queued, unsent task. ]]
local s = redis.call('HMGET', KEYS[1], 'status', 'submit_sent_at')
if s[1] ~= 'queued' or (s[2] and s[2] ~= '') then return 0 end
redis.call('HSET', KEYS[1], 'withdrawn', '1')
return 1
