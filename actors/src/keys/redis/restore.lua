-- Gives spend counters the spend the store kept when they hold less (Redis restarted and
-- lost them): the larger of both stays.
--
-- KEYS: spend keys. ARGV: per key, the stored spend and when the key expires (ms).
local restored = 0
for i, spend in ipairs(KEYS) do
  local stored = tonumber(ARGV[2 * i - 1])
  local current = tonumber(redis.call('GET', spend) or '0')
  if stored > current then
    redis.call('SET', spend, ARGV[2 * i - 1])
    redis.call('PEXPIREAT', spend, ARGV[2 * i])
    restored = restored + 1
  end
end
return restored
