--[[ delivery-14: a delivery's new status, with its attempt if there was one, and its index entries moved from the
  status its record held to the new one, in one step (a MULTI had to leave all three other statuses' indexes, not
  knowing which one the record was in: 12 index commands per change instead of 6).
  KEYS[1] delivery hash   KEYS[2] its attempts list
  KEYS[3..14] status indexes, by scope (caller, all, endpoint or task-url) then status, in DELIVERY_STATUSES order
  ARGV[1] MessagePack map: id, status, at, fields {name = value}, attempt (JSON, or absent), statuses (the order)
  Safe to run twice: the second run finds the new status and moves nothing (an attempt is recorded twice, as a
  resent MULTI would). A record without a known status leaves every other status's index, as before. A delivery
  that is gone (retention took it mid-attempt) is not made again.
  Returns 1 changed, 0 gone. ]]
local a = cmsgpack.unpack(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local old = redis.call('HGET', KEYS[1], 'status')
if a.attempt then redis.call('RPUSH', KEYS[2], a.attempt) end
local flat = {}
for k, v in pairs(a.fields) do flat[#flat + 1] = k; flat[#flat + 1] = v end
redis.call('HSET', KEYS[1], unpack(flat))
if a.attempt then redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
local known = false
for _, s in ipairs(a.statuses) do if s == old then known = true end end
for scope = 0, 2 do
  for i, s in ipairs(a.statuses) do
    local index = KEYS[3 + scope * 4 + i - 1]
    if s == a.status then
      redis.call('ZADD', index, a.at, a.id)
    elseif s == old or not known then
      redis.call('ZREM', index, a.id)
    end
  end
end
return 1
