-- 0001: initial key layout (see docs/redis.md).
--   <prefix>:b:{<topic>}         pub/sub channel of a topic (no key)
--   <prefix>:p:{<topic>}         hash: "<node>|<phx_ref>" -> {"key":..,"meta":{..}}, TTL
--   <prefix>:nodes               set of live node ids, TTL
--   <prefix>:n:{<node>}:hb       heartbeat, expires after redis.down_ms
--   <prefix>:n:{<node>}:topics   set of escaped topics the node has presences on, TTL
--   <prefix>:n:{<node>}:reap     lock of the node reaping this (dead) node
--   <prefix>:schema              hash: version, and one "step:<n>" entry per applied step
--                                (Redis Cluster: <prefix>:schema:{m<n>}, one per master)
-- Nothing to transform: a fresh Redis only needs its version recorded.
--
-- KEYS[1] = schema hash; ARGV[1] = expected current version; ARGV[2] = new version;
-- ARGV[3] = step name; ARGV[4] = applied-at timestamp
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then
  return redis.error_reply('layout version is ' .. current .. ', step expects ' .. ARGV[1])
end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'step:' .. ARGV[2], ARGV[3] .. ' applied at ' .. ARGV[4])
return tonumber(ARGV[2])
