-- Moves the deadlines of the leases an instance still holds (its requests in flight). A
-- lease already given back or expired is not brought back (XX).
--
-- KEYS: a leases set per lease. ARGV: deadline_ms, ttl_ms of the sets, then a lease id per key.
local deadline = ARGV[1]
local ttl = ARGV[2]
for i, leases in ipairs(KEYS) do
  redis.call('ZADD', leases, 'XX', deadline, ARGV[i + 2])
  redis.call('PEXPIRE', leases, ttl)
end
return #KEYS
