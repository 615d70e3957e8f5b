-- wrk script: POST requests of one sender kind signed the sender's way, read
-- from the Lua file SIGNED_REQUESTS names ({ {path, content type, headers,
-- body}, … }, made by benches/wrk/sign_kinds.py just before the run),
-- cycling through them. Answers are counted by status (benches/wrk/count.lua).
dofile("benches/wrk/count.lua")
local requests = dofile(os.getenv("SIGNED_REQUESTS"))
local i = 0
function request()
  i = i % #requests + 1
  local r = requests[i]
  local headers = { ["Content-Type"] = r[2] }
  for k, v in pairs(r[3]) do headers[k] = v end
  return wrk.format("POST", r[1], headers, r[4])
end
