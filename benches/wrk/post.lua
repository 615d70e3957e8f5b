-- wrk script: POST a ~300-byte webhook with a unique eventId per request,
-- and count the answers by status (wrk's own total counts every answer).
-- Usage: wrk ... -s benches/wrk/post.lua URL -- <run-id>
-- At the end it prints one line per status seen: "status 202: 1234567".
local threads = {}
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

local counter, run = 0, "r"
codes = {}
function init(args)
  run = args[1] or "r"
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function request()
  counter = counter + 1
  local body = string.format(
    '{"provider":"stripe","eventId":"evt_%s_%d_%d","timestamp":"2026-11-22T21:35:25.123Z",' ..
    '"data":{"amount":4200,"currency":"brl","customer_id":"cus_x1Y2z3W4","status":"succeeded",' ..
    '"description":"Order 100234, three items, shipped by Correios to Sao Paulo"}}',
    run, tid, counter)
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  codes[status] = (codes[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("codes")) do
      total[status] = (total[status] or 0) + n
    end
  end
  for status, n in pairs(total) do
    io.write(string.format("status %d: %d\n", status, n))
  end
end
