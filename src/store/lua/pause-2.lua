--[[ pause-2: the upstream account's pause, set or cleared, telling the caller whether the state changed.
  Every replica's submit jobs may meet the same refusal at once; only the one whose call changed the state logs it.
  KEYS[1] pause hash (reason, code, message, since)   KEYS[2] trial token
  ARGV[1] MessagePack map: op ('trip' or 'clear'), reason, code, message, now (for trip), sent_at (for clear: the
          evidence is a create sent at that time, or '' for a check made now)
  trip returns 1 when the queue was running (now paused), 2 when the reason changed, 0 when it was already so.
  clear returns 1 when it cleared a pause, 0 when there was none, or none older than the evidence. ]]
local a = cmsgpack.unpack(ARGV[1])
local since = redis.call('HGET', KEYS[1], 'since')
if a.op == 'trip' then
  if not since then
    redis.call('HSET', KEYS[1], 'reason', a.reason, 'code', a.code, 'message', a.message, 'since', a.now)
    redis.call('DEL', KEYS[2])
    return 1
  end
  local reason = redis.call('HGET', KEYS[1], 'reason')
  redis.call('HSET', KEYS[1], 'reason', a.reason, 'code', a.code, 'message', a.message)
  if reason ~= a.reason then return 2 end
  return 0
end
if not since then return 0 end
-- A create sent before the pause began says nothing about the account since.
if a.sent_at ~= '' and tonumber(a.sent_at) < tonumber(since) then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
