--[[ delivery-8: make a webhook delivery unless it is there: its hash, its entries in its scopes' indexes (`all`
  and `pending`) and in its task's set, in one step, so that no delivery is half-made and no index names a missing
  one. Safe to run twice (a fan-out read again, on any replica): a second run finds the hash and changes nothing.
  A hash without a status (left half-made by a version that wrote it in two steps) is written again.
  KEYS[1] delivery hash   KEYS[2..4] the scopes' `all` indexes   KEYS[5..7] the same scopes' `pending` indexes
  KEYS[8] the task's set of delivery ids
  ARGV[1] MessagePack map: id, now, fields {name = value}
  Returns 1 made, 0 there already. ]]
local a = cmsgpack.unpack(ARGV[1])
if redis.call('HEXISTS', KEYS[1], 'status') == 1 then return 0 end
local flat = {}
for k, v in pairs(a.fields) do flat[#flat + 1] = k; flat[#flat + 1] = v end
redis.call('HSET', KEYS[1], 'id', a.id, unpack(flat))
for i = 2, 7 do redis.call('ZADD', KEYS[i], a.now, a.id) end
redis.call('SADD', KEYS[8], a.id)
return 1
