--[[ refund-2: give back the units a task was charged (create-16) when it ended without ever being sent upstream:
  canceled while queued, withdrawn (NOT_ACCEPTED). Upstream never saw it, so it cost the account nothing. The
  units go back to the day they were charged to. Safe to run late or twice: the task's `units` field is removed
  with the refund, and a task that was sent (submit_sent_at) or is not canceled gives nothing back.
  KEYS[1] task hash   KEYS[2] the usage hash of the day the task was created
  Returns the units given back as a string ('0' when none). ]]
local s = redis.call('HMGET', KEYS[1], 'status', 'submit_sent_at', 'units')
if s[1] ~= 'canceled' or (s[2] and s[2] ~= '') or not s[3] or s[3] == '' then return '0' end
redis.call('HDEL', KEYS[1], 'units')
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HINCRBYFLOAT', KEYS[2], 'units', '-' .. s[3]) end
return s[3]
