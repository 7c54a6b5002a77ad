--[[ bucket-2: take one token from a caller's create bucket (docs/API.md, "Per-caller limits"), unless the request
  is the replay of a create that made its task (its Idempotency-Key has a record): a replay makes nothing, so it
  costs nothing. The bucket holds `capacity` tokens and refills at `capacity` per minute; a full bucket is no key
  at all (it expires once it would be full again). Time is Redis's own (TIME), one clock for every replica, so a
  replica whose clock runs ahead cannot refill it early. Safe to run twice: a second run takes a second token,
  which errs on the caller's side of nothing (the create it stands for is not made twice).
  KEYS[1] the caller's bucket hash {tokens, at_ms}   KEYS[2] the Idempotency-Key's record (KEYS[1] again if none)
  ARGV[1] capacity (tokens, > 0)
  Returns {1, 0} taken | {2, 0} a replay (nothing taken) | {0, ms until one token} refused. ]]
local bucket, capacity = KEYS[1], tonumber(ARGV[1])
if KEYS[2] ~= bucket and redis.call('HEXISTS', KEYS[2], 'task_id') == 1 then return {2, 0} end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local perMs = capacity / 60000
local state = redis.call('HMGET', bucket, 'tokens', 'at_ms')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil or at == nil then tokens, at = capacity, now end
-- A lowered limit takes effect at once; a clock step back refills nothing.
tokens = math.min(capacity, tokens + math.max(0, now - at) * perMs)
if tokens < 1 then
  redis.call('HSET', bucket, 'tokens', tostring(tokens), 'at_ms', tostring(now))
  redis.call('PEXPIRE', bucket, math.ceil((capacity - tokens) / perMs) + 1000)
  return {0, math.ceil((1 - tokens) / perMs)}
end
tokens = tokens - 1
redis.call('HSET', bucket, 'tokens', tostring(tokens), 'at_ms', tostring(now))
redis.call('PEXPIRE', bucket, math.ceil((capacity - tokens) / perMs) + 1000)
return {1, 0}
