-- wrk script: like ../shared/bench/sessions.lua (every request carries
-- "Cookie: connect.sid=s<i>", i cycling over SESSIONS ids), but wrk exits after
-- MAX_REQUESTS responses (default 10000; use one wrk thread), so a run under valgrind is
-- bounded in count as well as by wrk's -d. (wrk.thread:stop() would not do: wrk's main
-- thread still sleeps the whole -d.) It then prints "BENCH requests=N" and nothing else;
-- if -d ends first, done() prints the usual full BENCH line.
local N = tonumber(os.getenv("SESSIONS") or "10000")
local MAX = tonumber(os.getenv("MAX_REQUESTS") or "10000")
local reqs = {}
local i = 0
local seen = 0

function init(args)
   for k = 1, N do
      reqs[k] = wrk.format("GET", "/", { ["Cookie"] = "connect.sid=s" .. (k - 1) })
   end
end

function request()
   i = i + 1
   if i > N then i = 1 end
   return reqs[i]
end

function response(status, headers, body)
   seen = seen + 1
   if seen >= MAX then
      io.write(string.format("BENCH requests=%d bounded=1\n", seen))
      io.flush()
      os.exit(0)
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "BENCH requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
      "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
      summary.requests, summary.duration,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      e.connect, e.read, e.write, e.status, e.timeout))
end
