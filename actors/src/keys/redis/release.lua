-- Ends a request on its subjects: gives its lease back and charges the tokens it used and
-- what it cost, in one atomic step. A charge without a lease (replayed after Redis was
-- unreachable, or of a request admitted while it was) only charges.
--
-- KEYS: the layout of admit.lua (window, leases, spend per budget, warned per budget).
-- ARGV: now_ms, lease_id ('' none), usd, tokens, subjects; then per subject: budgets; then
-- per budget: soft_usd (0: none), period_end_ms.
--
-- Returns, per subject and budget in order: the period's spend (a string), and 1 when this
-- charge is the one that passed the soft threshold (said once per period, by one instance).
local MINUTE = 60000
local DAY = 86400000
local now = tonumber(ARGV[1])
local lease = ARGV[2]
local usd = tonumber(ARGV[3])
local tokens = tonumber(ARGV[4])
local count = tonumber(ARGV[5])

local out = {}
local a, k = 6, 1
for _ = 1, count do
  local window, leases = KEYS[k], KEYS[k + 1]
  local nb = tonumber(ARGV[a])
  a = a + 1
  if lease ~= '' then
    redis.call('ZREM', leases, lease)
  end
  if tokens > 0 then
    local start = tonumber(redis.call('HGET', window, 'start'))
    if start == nil or now >= start + MINUTE then
      redis.call('HSET', window, 'start', now, 'req', 0, 'tok', tokens)
    else
      redis.call('HINCRBY', window, 'tok', tokens)
    end
    redis.call('PEXPIRE', window, 2 * MINUTE)
  end
  for b = 1, nb do
    local soft, ending = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
    a = a + 2
    local spend, warned = KEYS[k + 1 + b], KEYS[k + 1 + nb + b]
    local total
    if usd > 0 then
      total = tonumber(redis.call('INCRBYFLOAT', spend, ARGV[3]))
      -- Kept a day past its period, for late readers; then gone.
      redis.call('PEXPIREAT', spend, ending + DAY)
    else
      total = tonumber(redis.call('GET', spend) or '0')
    end
    local first = 0
    if soft > 0 and total >= soft then
      if redis.call('SET', warned, '1', 'NX', 'PX', ending + DAY - now) then
        first = 1
      end
    end
    out[#out + 1] = tostring(total)
    out[#out + 1] = first
  end
  k = k + 2 + 2 * nb
end
return out
