-- The flush of one batch (listener.storage.store.Store.flush): batch-id check,
-- msg_id de-duplication against the hour's id set and both neighbours', then the
-- batch's increments, aggregated per bucket and field by the caller.  Atomic: a
-- flush is counted entirely or not at all.  ARGV: prefix, config JSON, columns
-- JSON, increments; the caller's docstring gives their shapes.
local p = ARGV[1]
local cfg = cjson.decode(ARGV[2])
-- fencing: a batch from a writer whose lease token (cfg.lease) is not the one in
-- P:writer any more is refused, nothing written: {-2, the holder's token}
if cfg.lease then
  local holder = redis.call('GET', p .. ':writer')
  if holder ~= cfg.lease then return {-2, holder or ''} end
end
local cols = cjson.decode(ARGV[3])
local ids, stamps = cols[1], cols[2]
local bk = p .. ':batch:' .. cfg.batch
local prev = redis.call('GET', bk)
if prev then
  return {-1, prev}
end
local now = tonumber(redis.call('TIME')[1])
local ib_size = cfg.ids_bucket
-- an id's set is its hour's shard: slot = hour start * shards + shard (cols[3]),
-- exact in a double; the same shard of the neighbouring hours is slot -/+ step
local nsh = cfg.ids_shards
local step = ib_size * nsh
local function hour_of(s) return math.floor(s / nsh) end
local function key_of(s) return p .. ':ids:' .. hour_of(s) .. ':' .. (s % nsh) end
-- an id set whose expiry time has passed would be deleted at the end of this
-- script: it is not written (the batch's own ids still de-duplicate, in `added`)
local function gone(s) return hour_of(s) + ib_size + cfg.ids_ttl <= now end
local function push(lists, key, value)
  local l = lists[key]
  if not l then
    l = {}
    lists[key] = l
  end
  l[#l + 1] = value
end
-- 1. the batch's msg_ids by hour bucket
local stamp_of = {}
local by_bucket = {}
for idx = 1, #ids do
  local id = ids[idx]
  if id ~= '' then
    local ts = stamps[idx]
    local ib = (ts - (ts % ib_size)) * nsh + cols[3][idx]
    stamp_of[idx] = ib
    push(by_bucket, ib, id)
  end
end
-- 2. what Redis held before the batch: each live id set asked once, in chunks
-- (SMISMEMBER), about every id that may be checked against it (its own bucket's
-- and both neighbours')
local pre = {}
local function ask(ib)
  if pre[ib] ~= nil then return end
  local found = {}
  pre[ib] = found
  if gone(ib) or redis.call('EXISTS', key_of(ib)) == 0 then return end
  local cands = {}
  for _, b in ipairs({ib - step, ib, ib + step}) do
    for _, id in ipairs(by_bucket[b] or {}) do cands[#cands + 1] = id end
  end
  for first = 1, #cands, 1000 do
    local last = math.min(first + 999, #cands)
    local chunk = {unpack(cands, first, last)}
    local res = redis.call('SMISMEMBER', key_of(ib), unpack(chunk))
    for k = 1, #chunk do
      if res[k] == 1 then found[chunk[k]] = true end
    end
  end
end
for ib, _ in pairs(by_bucket) do
  ask(ib - step)
  ask(ib)
  ask(ib + step)
end
-- 3. message by message, in order, as one SISMEMBER/SADD each would decide: a
-- duplicate when its id is in its bucket's set or a neighbour's, counting the ids
-- this batch added before it
local added = {}
local to_add = {}
local function member(ib, id)
  local a = added[ib]
  return pre[ib][id] ~= nil or (a ~= nil and a[id] ~= nil)
end
local flags = {}
local dups = {}
local last_ts = 0
local new_count = 0
for idx = 1, #ids do
  local id, ts = ids[idx], stamps[idx]
  local new = 1
  if id ~= '' then
    local ib = stamp_of[idx]
    if member(ib - step, id) or member(ib + step, id) or member(ib, id) then
      new = 0
    else
      local a = added[ib]
      if not a then
        a = {}
        added[ib] = a
      end
      a[id] = true
      if not gone(ib) then push(to_add, ib, id) end
    end
  end
  flags[idx] = new
  if new == 1 then
    new_count = new_count + 1
    if ts > last_ts then last_ts = ts end
  else
    dups[#dups + 1] = idx
  end
end
local id_keys = {}
for ib, t in pairs(to_add) do
  for first = 1, #t, 1000 do
    redis.call('SADD', key_of(ib), unpack(t, first, math.min(first + 999, #t)))
  end
  id_keys[key_of(ib)] = hour_of(ib) + ib_size + cfg.ids_ttl
end
local aggs = cjson.decode(ARGV[4])
if #dups > 0 then
  local details = cjson.decode(ARGV[5])
  local index = {}
  for _, a in ipairs(aggs) do index[a[1]] = a end
  local function dec(h, field)
    h[field] = (h[field] or 0) - 1
  end
  for _, idx in ipairs(dups) do
    local ts = stamps[idx]
    local topic, cat, users = details[1][idx], details[2][idx], details[3][idx]
    for _, size in ipairs(cfg.buckets) do
      local a = index[p .. ':b:' .. size .. ':' .. (ts - (ts % size))]
      if a then
        a[3] = a[3] - 1
        dec(a[4], topic)
        dec(a[5], cat)
        for _, u in ipairs(users) do
          dec(a[6], u)
          dec(a[7], u .. '\031' .. cat)
        end
      end
    end
  end
end
local suffixes = {':t', ':c', ':u', ':uc'}
for _, a in ipairs(aggs) do
  local base, at = a[1], a[2]
  if at > now then
    if a[3] ~= 0 then
      redis.call('HINCRBY', base .. ':n', 'messages', a[3])
      redis.call('EXPIREAT', base .. ':n', at)
    end
    for k, suffix in ipairs(suffixes) do
      local key = base .. suffix
      local wrote = false
      for f, n in pairs(a[k + 3]) do
        if n ~= 0 then
          redis.call('HINCRBY', key, f, n)
          wrote = true
        end
      end
      if wrote then redis.call('EXPIREAT', key, at) end
    end
  end
end
for key, at in pairs(id_keys) do
  redis.call('EXPIREAT', key, at)
end
if new_count > 0 then
  redis.call('HINCRBY', p .. ':meta', 'messages_total', new_count)
  local prev_ts = tonumber(redis.call('HGET', p .. ':meta', 'last_message_at') or '0')
  if last_ts > prev_ts then
    redis.call('HSET', p .. ':meta', 'last_message_at', last_ts)
  end
end
local recorded = table.concat(flags)
redis.call('SET', bk, recorded, 'EX', cfg.batch_ttl)
return {new_count, recorded}
