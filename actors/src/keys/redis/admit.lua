-- Admits one request on every subject it belongs to (its key, its tenant), or on none, in one
-- atomic step: every counter is checked first, then every counter is counted.
--
-- KEYS, per subject: window (hash: start, req, tok), leases (sorted set: lease id -> deadline
-- in ms), then one spend key per budget, then one warned key per budget (unused here).
-- ARGV: now_ms, lease_id, lease_deadline_ms, subjects; then per subject: rpm, tpm,
-- max_parallel (0: none), budgets; then per budget: usd, soft_usd (0: none), period_end_ms.
--
-- Returns {1, req_limit, req_left, req_reset_ms, tok_limit, tok_left, tok_reset_ms} (-1 when
-- no subject has that rate), or {0, subject_index, reason, limit_or_budget_index, used,
-- reset_ms} with reason requests | tokens | parallel | budget.
local MINUTE = 60000
local now = tonumber(ARGV[1])
local lease = ARGV[2]
local deadline = tonumber(ARGV[3])
local count = tonumber(ARGV[4])

local subjects = {}
local a, k = 5, 1
for i = 1, count do
  local s = {
    rpm = tonumber(ARGV[a]), tpm = tonumber(ARGV[a + 1]), par = tonumber(ARGV[a + 2]),
    window = KEYS[k], leases = KEYS[k + 1], budgets = {},
  }
  local nb = tonumber(ARGV[a + 3])
  a = a + 4
  for b = 1, nb do
    s.budgets[b] = { usd = tonumber(ARGV[a]), spend = KEYS[k + 1 + b] }
    a = a + 3
  end
  k = k + 2 + 2 * nb
  subjects[i] = s
end

-- Check every subject before counting any.
for i, s in ipairs(subjects) do
  local w = redis.call('HMGET', s.window, 'start', 'req', 'tok')
  local start = tonumber(w[1])
  if start == nil or now >= start + MINUTE then
    s.start, s.req, s.tok, s.fresh = now, 0, 0, true
  else
    s.start, s.req, s.tok = start, tonumber(w[2]) or 0, tonumber(w[3]) or 0
  end
  local reset = s.start + MINUTE - now
  if s.rpm > 0 and s.req >= s.rpm then
    return { 0, i, 'requests', s.rpm, tostring(s.req), reset }
  end
  if s.tpm > 0 and s.tok >= s.tpm then
    return { 0, i, 'tokens', s.tpm, tostring(s.tok), reset }
  end
  -- Leases past their deadline belong to requests whose instance stopped renewing them.
  redis.call('ZREMRANGEBYSCORE', s.leases, '-inf', now)
  if s.par > 0 and redis.call('ZCARD', s.leases) >= s.par then
    return { 0, i, 'parallel', s.par, tostring(s.par), 1000 }
  end
  for b, budget in ipairs(s.budgets) do
    local spent = tonumber(redis.call('GET', budget.spend) or '0')
    if spent >= budget.usd then
      return { 0, i, 'budget', b, tostring(spent), 0 }
    end
  end
end

-- Count on every subject.
local req_limit, req_left, req_reset = -1, -1, 0
local tok_limit, tok_left, tok_reset = -1, -1, 0
for _, s in ipairs(subjects) do
  if s.fresh then
    redis.call('HSET', s.window, 'start', now, 'req', 1, 'tok', 0)
  else
    redis.call('HINCRBY', s.window, 'req', 1)
  end
  redis.call('PEXPIRE', s.window, 2 * MINUTE)
  redis.call('ZADD', s.leases, deadline, lease)
  redis.call('PEXPIRE', s.leases, deadline - now + MINUTE)
  local reset = s.start + MINUTE - now
  if s.rpm > 0 then
    local left = s.rpm - s.req - 1
    if req_left < 0 or left < req_left then
      req_limit, req_left, req_reset = s.rpm, left, reset
    end
  end
  if s.tpm > 0 then
    local left = math.max(s.tpm - s.tok, 0)
    if tok_left < 0 or left < tok_left then
      tok_limit, tok_left, tok_reset = s.tpm, left, reset
    end
  end
end
return { 1, req_limit, req_left, req_reset, tok_limit, tok_left, tok_reset }
