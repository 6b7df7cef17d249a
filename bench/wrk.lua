-- One script for every wrk run of `make bench`.
-- BENCH_METHOD (GET), BENCH_CONTENT_TYPE and BENCH_BODIES (a file, one body per
-- line, sent in turn) shape the requests; -H headers (the token) are kept.
-- At the end it prints one line, "BENCH_JSON {...}", that bench/run.py reads.

local method = os.getenv("BENCH_METHOD") or "GET"
local content_type = os.getenv("BENCH_CONTENT_TYPE")
local bodies_file = os.getenv("BENCH_BODIES")
local requests = {}
local n = 0

init = function(args)
  local headers = {}
  for k, v in pairs(wrk.headers) do headers[k] = v end
  if content_type then headers["Content-Type"] = content_type end
  if bodies_file then
    for line in io.lines(bodies_file) do
      requests[#requests + 1] = wrk.format(method, nil, headers, line)
    end
  else
    requests[1] = wrk.format(method, nil, headers, nil)
  end
end

request = function()
  n = n % #requests + 1
  return requests[n]
end

done = function(summary, latency, reqs)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
