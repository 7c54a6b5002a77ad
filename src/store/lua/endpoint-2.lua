--[[ endpoint-2: register a webhook endpoint unless its caller already has `max` (0 = no limit): the count and the
  write in one step, so concurrent registrations on any replica cannot pass the limit together. Safe to run
  twice: the endpoint's id is fixed before the call, and a second run finds it.
  KEYS[1] endpoint hash   KEYS[2] the caller's endpoint index (sorted by created_at)
  ARGV[1] MessagePack map: id, created_at, max, fields {name = value}
  Returns 1 registered (or already there), 0 refused by the limit. ]]
local a = cmsgpack.unpack(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
local max = tonumber(a.max)
if max > 0 and redis.call('ZCARD', KEYS[2]) >= max then return 0 end
local flat = {}
for k, v in pairs(a.fields) do flat[#flat + 1] = k; flat[#flat + 1] = v end
redis.call('HSET', KEYS[1], unpack(flat))
redis.call('ZADD', KEYS[2], a.created_at, a.id)
return 1
