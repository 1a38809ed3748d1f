-- Reads subjects' use: this minute's requests and tokens, requests at once, each budget's
-- spend in its current period. Changes nothing.
--
-- KEYS: the layout of admit.lua. ARGV: now_ms, subjects; then per subject: budgets.
-- Returns, per subject: requests, tokens, in_flight, then each budget's spend (a string).
local MINUTE = 60000
local now = tonumber(ARGV[1])
local count = tonumber(ARGV[2])
local out = {}
local a, k = 3, 1
for _ = 1, count do
  local nb = tonumber(ARGV[a])
  a = a + 1
  local w = redis.call('HMGET', KEYS[k], 'start', 'req', 'tok')
  local start = tonumber(w[1])
  if start ~= nil and now < start + MINUTE then
    out[#out + 1] = tonumber(w[2]) or 0
    out[#out + 1] = tonumber(w[3]) or 0
  else
    out[#out + 1] = 0
    out[#out + 1] = 0
  end
  out[#out + 1] = redis.call('ZCOUNT', KEYS[k + 1], '(' .. now, '+inf')
  for b = 1, nb do
    out[#out + 1] = redis.call('GET', KEYS[k + 1 + b]) or '0'
  end
  k = k + 2 + 2 * nb
end
return out
