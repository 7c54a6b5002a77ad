--[[ fair-release-5: gives free submit slots to waiting tasks, the caller with the earliest start tag first
  (start-time fair queuing; src/jobs/fair.ts has the why).
  KEYS[1] ready   KEYS[2] queued   KEYS[3] callers   (as in fair-enqueue-4)
  KEYS[4] lag (hash caller → how far its next start tag is ahead of the virtual time; absent = 0)
  KEYS[5] slots (sorted set: released task id → when its lease ends, Unix ms)
  ARGV[1] MessagePack map: now, cap (slots in all), lease (ms), step (a weight-1 caller's step: the default weight's),
          steps (caller → its step, for callers whose weight is not the default), max (releases at most)
  Tags are kept relative to the virtual time, so no number grows: every lag lies in [0, the largest step], and a
  caller whose lag is used up is forgotten. Returns a flat list: task id, caller, task id, caller, … ]]
local a = cmsgpack.unpack(ARGV[1])
-- A lease that ended belongs to a replica that died between taking a slot and finishing the job.
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', a.now)
local out = {}
for _ = 1, a.max do
  if redis.call('ZCARD', KEYS[5]) >= a.cap then break end
  local waiting = redis.call('HKEYS', KEYS[3])
  if #waiting == 0 then break end
  local pick, pickLag
  for _, c in ipairs(waiting) do
    local lag = tonumber(redis.call('HGET', KEYS[4], c) or '0')
    if pick == nil or lag < pickLag or (lag == pickLag and c < pick) then pick, pickLag = c, lag end
  end
  -- ' ' sorts before every character a caller name may hold, so this range is exactly this caller's line.
  local head = redis.call('ZRANGEBYLEX', KEYS[1], '[' .. pick .. ' ', '(' .. pick .. '!', 'LIMIT', 0, 1)[1]
  if head == nil then
    -- A count with no line behind it (cannot happen but through a hand edit): forget it rather than spin.
    redis.call('HDEL', KEYS[3], pick)
  else
    redis.call('ZREM', KEYS[1], head)
    local task = string.sub(head, #pick + 18)
    redis.call('HDEL', KEYS[2], task)
    if redis.call('HINCRBY', KEYS[3], pick, -1) <= 0 then redis.call('HDEL', KEYS[3], pick) end
    -- The virtual time moves to the chosen start tag: every lag shrinks by the chosen one's.
    if pickLag > 0 then
      local lags = redis.call('HGETALL', KEYS[4])
      for i = 1, #lags, 2 do
        local left = tonumber(lags[i + 1]) - pickLag
        if left > 0 then redis.call('HSET', KEYS[4], lags[i], left) else redis.call('HDEL', KEYS[4], lags[i]) end
      end
    end
    redis.call('HSET', KEYS[4], pick, a.steps[pick] or a.step)
    redis.call('ZADD', KEYS[5], a.now + a.lease, task)
    out[#out + 1] = task
    out[#out + 1] = pick
  end
end
return out
