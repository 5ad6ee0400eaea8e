"""The Lua scripts the Redis store runs (:mod:`authz.ratelimit.redis_store`), one
``EVALSHA`` per decision: :data:`ACQUIRE` decides every item of a decision all or
nothing on Redis's clock; :data:`RELEASE` gives an admission back. Modes: 0 GCRA
(a token bucket as a theoretical arrival time), 1 lease (a sorted set of holders).
"""

#: KEYS: one per item. ARGV[1]: now in microseconds ("" = Redis TIME), ARGV[2]: a
#: nonce for lease members, then per item: mode, interval (us), capacity, shadow, cost.
#: Returns per item: admitted (1/0), remaining, reset (us), retry after (us).
ACQUIRE = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local nonce = ARGV[2]
local out = {}
local states = {}
local admit = true
for i, key in ipairs(KEYS) do
  local b = 2 + (i - 1) * 5
  local mode = tonumber(ARGV[b + 1])
  local interval = tonumber(ARGV[b + 2])
  local cap = tonumber(ARGV[b + 3])
  local shadow = ARGV[b + 4] == '1'
  local cost = tonumber(ARGV[b + 5])
  local ok, remaining, reset, retry, state = 0, 0, 0, 0, false
  if mode == 1 then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local held = redis.call('ZCARD', key)
    if held + cost <= cap then
      ok, remaining, reset, state = 1, cap - held - cost, interval, now + interval
    else
      local nth = held + cost - cap - 1
      local first = redis.call('ZRANGE', key, nth, nth, 'WITHSCORES')
      local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
      retry = tonumber(first[2]) - now
      reset = tonumber(last[2]) - now
    end
  else
    local tat = tonumber(redis.call('GET', key)) or now
    if tat < now then tat = now end
    local new_tat = tat + interval * cost
    if mode == 2 then
      ok, reset = 1, new_tat - now
      remaining = math.floor((interval * cap - (new_tat - now)) / interval)
      if cost > 0 then state = new_tat end
    else
      local allow_at = new_tat - interval * cap
      if allow_at <= now then
        ok, state, reset = 1, new_tat, new_tat - now
        remaining = math.floor((now - allow_at) / interval)
      else
        reset, retry = tat - now, allow_at - now
      end
    end
  end
  if ok == 0 and not shadow then admit = false end
  states[i] = state
  out[#out + 1] = ok
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
end
for i, key in ipairs(KEYS) do
  local state = states[i]
  local mode = tonumber(ARGV[2 + (i - 1) * 5 + 1])
  if state and (admit or mode == 2) then
    if mode == 1 then
      local interval = tonumber(ARGV[2 + (i - 1) * 5 + 2])
      redis.call('ZADD', key, state, nonce .. ':' .. i)
      redis.call('PEXPIRE', key, math.ceil(interval / 1000) + 1)
    else
      local ttl = math.ceil((state - now) / 1000) + 1
      redis.call('SET', key, string.format('%.0f', state), 'PX', ttl)
    end
  end
end
return out
"""

#: Undo an admission (another store denied the request): KEYS as for ACQUIRE,
#: ARGV per item: mode, interval (us), cost.
RELEASE = """
for i, key in ipairs(KEYS) do
  local b = (i - 1) * 3
  local mode = tonumber(ARGV[b + 1])
  local interval = tonumber(ARGV[b + 2])
  local cost = tonumber(ARGV[b + 3])
  if mode == 1 then
    redis.call('ZPOPMAX', key, cost)
  else
    local tat = tonumber(redis.call('GET', key))
    local ttl = redis.call('PTTL', key)
    if tat and ttl > 0 then
      local back = interval * cost
      local left = ttl - math.floor(back / 1000)
      if left > 0 then
        redis.call('SET', key, string.format('%.0f', tat - back), 'PX', left)
      else
        redis.call('DEL', key)
      end
    end
  end
end
return 1
"""
