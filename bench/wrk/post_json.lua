-- wrk script: POST one JSON body (read from the file named by $WRK_BODY) on every request, and print
-- one JSON line at the end with the request count, duration, errors and latency percentiles (us).
-- Usage: WRK_BODY=body.json wrk -t2 -c16 -d20s --latency -s post_json.lua http://127.0.0.1:PORT/predict

local path = os.getenv("WRK_BODY")
if path == nil or path == "" then
  error("post_json.lua: set WRK_BODY to the file holding the JSON request body")
end
local file = assert(io.open(path, "rb"), "post_json.lua: cannot open WRK_BODY=" .. path)
local body = file:read("*a")
file:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  -- errors.status counts responses with an HTTP status above 399 (wrk's own rule); neither server
  -- answers 1xx or 3xx here, so it is the count of non-2xx responses.
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "p999": %d, "mean": %.1f, "max": %d, "stdev": %.1f}, ' ..
    '"body_bytes": %d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max, latency.stdev, #body))
end
