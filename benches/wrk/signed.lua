-- wrk script: POST Stripe events signed by the stripe library, read from
-- the Lua file SIGNED_REQUESTS names ({ {body, signature}, … }, made by
-- benches/wrk/sign_stripe.py just before the run), cycling through them.
-- Answers are counted by status (benches/wrk/count.lua).
dofile("benches/wrk/count.lua")
local requests = dofile(os.getenv("SIGNED_REQUESTS"))
local i = 0
wrk.method = "POST"
function request()
  i = i % #requests + 1
  local r = requests[i]
  return wrk.format(nil, nil, { ["Content-Type"] = "application/json", ["Stripe-Signature"] = r[2] }, r[1])
end
