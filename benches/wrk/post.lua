-- wrk script: POST a ~300-byte webhook with a unique eventId per request,
-- and count the answers by status (wrk's own total counts every answer).
-- Usage: wrk ... -s benches/wrk/post.lua URL -- <run-id>
-- Answers are counted by status (benches/wrk/count.lua).

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

dofile("benches/wrk/count.lua")
