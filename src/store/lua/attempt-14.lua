--[[ attempt-14: record one attempt of a webhook delivery and the state it leaves, in one step: the attempt appended,
  the hash's state, and the delivery moved out of its previous state's index into the new one's in each of its
  scopes, so a delivery is always listed under exactly the state its hash holds. A delivery that is gone (retention
  took it mid-attempt) is not made again.
  KEYS[1] delivery hash   KEYS[2] its attempts (list)
  KEYS[3..14] per scope (3), the index of each state in the order of ARGV's `states`
  ARGV[1] MessagePack map: id, now, status, attempt (JSON), states [names], fields {name = value}
  Returns 1 recorded, 0 gone. ]]
local a = cmsgpack.unpack(ARGV[1])
local prev = redis.call('HGET', KEYS[1], 'status')
if not prev then return 0 end
redis.call('RPUSH', KEYS[2], a.attempt)
local flat = {}
for k, v in pairs(a.fields) do flat[#flat + 1] = k; flat[#flat + 1] = v end
redis.call('HSET', KEYS[1], 'status', a.status, unpack(flat))
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
local n = #a.states
for s = 0, 2 do
  for i, state in ipairs(a.states) do
    local key = KEYS[2 + s * n + i]
    if state == a.status then
      redis.call('ZADD', key, a.now, a.id)
    elseif state == prev then
      redis.call('ZREM', key, a.id)
    end
  end
end
return 1
