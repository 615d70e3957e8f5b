-- wrk script: POST post.lua's ~300-byte webhook (a unique eventId each) at
-- a fixed rate instead of as fast as the server answers. Each wrk thread
-- keeps a schedule of RATE / threads requests per second from its start and
-- delays every request to its slot (wrk's delay() hook, whole milliseconds,
-- on a monotonic clock through LuaJIT's FFI). A request whose slot passed
-- while every connection was busy goes at once, so the rate holds as long as
-- the connections outnumber the requests in flight; the script counts the
-- requests that went out late by more than 10 ms.
-- Usage: wrk -t2 -c400 -d1800s -s benches/wrk/paced.lua URL -- <run-id> <rate> <threads>
local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } timespec_t;
  int clock_gettime(int clk_id, timespec_t *tp);
]]
local ts = ffi.new("timespec_t")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

-- post.lua's bodies and per-status counts; its init() reads the run id.
dofile("benches/wrk/post.lua")

local per_ms, start, scheduled = 1, nil, 0
late = 0
local post_init = init
function init(args)
  post_init(args)
  per_ms = (tonumber(args[2]) or 10000) / (tonumber(args[3]) or 1) / 1000
end

function delay()
  local t = now_ms()
  start = start or t
  scheduled = scheduled + 1
  local slot = start + scheduled / per_ms
  if slot < t - 10 then
    late = late + 1
  end
  return slot > t and math.floor(slot - t) or 0
end

local count_done = done
function done(summary, latency, requests)
  count_done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do
    total = total + (t:get("late") or 0)
  end
  io.write(string.format("late by over 10 ms: %d\n", total))
end
