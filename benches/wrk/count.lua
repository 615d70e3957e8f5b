-- Shared by the wrk scripts: counts answers by status in every thread and
-- prints one line per status seen at the end: "status 202: 1234567".
-- (wrk's own total counts every answer, whatever its status.)
threads = {}
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

codes = {}
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
